"""Checkpoints, interrupts, non-finite log-probs, long documents and determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import rel_close, score_report_json, write_jsonl
from lleval.commands.score import evaluate
from lleval.commands.compare import load_report
from lleval.config import EvalConfig
from lleval.errors import ConfigError, LlevalError, ReportError, ScoringError
from lleval.plan.tokenization import encode, split_for_tokenizing

TEXTS = [f"Document {i}. " + "The river begins as a spring in a boggy hollow high on the moor. " * (1 + i % 5) for i in range(30)]


def _data(tmp_path: Path, texts: list[str] = TEXTS) -> str:
    return write_jsonl(tmp_path / "d.jsonl", texts)


def _config(tmp_path: Path, **kw: Any) -> EvalConfig:
    base = dict(dataset=_data(tmp_path), max_length=32, stride=16, batch_size=3, block_tokens=300, bootstrap=0)
    return EvalConfig(**{**base, **kw})


def _stop_after(n: int) -> Any:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > n

    return should_stop


def test_interrupted_then_resumed_equals_uninterrupted(tiny_loaded: Any, tmp_path: Path) -> None:
    full = evaluate(_config(tmp_path), loaded=tiny_loaded)
    ckpt = str(tmp_path / "run.ckpt")
    partial = evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded, should_stop=_stop_after(12))
    assert partial.complete is False
    assert 0 < len(partial.documents) < len(full.documents)
    assert [d.to_dict() for d in partial.documents] == [d.to_dict() for d in full.documents[: len(partial.documents)]]
    resumed = evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded)
    assert resumed.complete is True
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in full.documents]
    assert rel_close(resumed.totals.log_likelihood, full.totals.log_likelihood, 1e-12)
    assert any("resumed from" in n for n in resumed.notes)


def test_checkpoint_of_other_protocol_model_or_data_is_refused(tiny_loaded: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.score import load

    ckpt = str(tmp_path / "run.ckpt")
    evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded, should_stop=_stop_after(12))
    with pytest.raises(ConfigError, match=r"made with --stride 16 \(this run: --stride 8\)"):
        evaluate(_config(tmp_path, checkpoint=ckpt, stride=8), loaded=tiny_loaded)
    with pytest.raises(ConfigError, match="different model"):
        evaluate(_config(tmp_path, checkpoint=ckpt), loaded=load(EvalConfig(model=str(tiny_llama_dir))))
    other = tmp_path / "other"
    other.mkdir()
    changed = _data(other, [TEXTS[0] + " changed"] + TEXTS[1:])
    with pytest.raises(ConfigError, match="different data"):
        evaluate(_config(tmp_path, checkpoint=ckpt, dataset=changed), loaded=tiny_loaded)


def _nan_scorer(inner: Any, at: int) -> Any:
    def scorer(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        out = inner(input_ids, attention_mask, labels, score_mask).clone()
        if input_ids.shape[0] and len(out) > at:
            out[at] = float("nan")
        return out

    return scorer


def test_nonfinite_stops_with_document_and_position(tiny_loaded: Any, tmp_path: Path) -> None:
    broken = dataclasses.replace(tiny_loaded, scorer=_nan_scorer(tiny_loaded.scorer, 0))
    with pytest.raises(ScoringError, match=r"non-finite log-prob \(nan\) in document \d+ .* token position \d+"):
        evaluate(_config(tmp_path), loaded=broken)


def test_allow_nonfinite_counts_and_leaves_out(tiny_loaded: Any, tmp_path: Path) -> None:
    broken = dataclasses.replace(tiny_loaded, scorer=_nan_scorer(tiny_loaded.scorer, 0))
    report = evaluate(_config(tmp_path, allow_nonfinite=True), loaded=broken)
    full = evaluate(_config(tmp_path), loaded=tiny_loaded)
    n_bad = report.totals.nonfinite
    assert n_bad == report.to_dict()["timing"]["batches"]  # one NaN per batch
    assert report.totals.tokens == full.totals.tokens - n_bad
    assert math.isfinite(report.totals.log_likelihood)
    assert any("NaN or infinite" in n for n in report.notes)


@pytest.mark.parametrize("batch_size,max_batch_tokens", [(1, None), (2, None), (5, None), (16, None), (16, 64), (8, 100)])
def test_totals_do_not_depend_on_batching(tiny_loaded: Any, tmp_path: Path, batch_size: int, max_batch_tokens: int | None) -> None:
    reference = evaluate(_config(tmp_path, batch_size=1), loaded=tiny_loaded)
    other = evaluate(_config(tmp_path, batch_size=batch_size, max_batch_tokens=max_batch_tokens), loaded=tiny_loaded)
    assert other.totals.tokens == reference.totals.tokens
    assert rel_close(other.totals.log_likelihood, reference.totals.log_likelihood, 1e-6)


def test_totals_do_not_depend_on_document_order(tiny_loaded: Any, tmp_path: Path) -> None:
    forward = evaluate(_config(tmp_path), loaded=tiny_loaded)
    back = tmp_path / "back"
    back.mkdir()
    backward = evaluate(_config(tmp_path, dataset=_data(back, TEXTS[::-1])), loaded=tiny_loaded)
    assert rel_close(forward.totals.log_likelihood, backward.totals.log_likelihood, 1e-6)


def test_two_runs_give_byte_identical_rows(tiny_loaded: Any, tmp_path: Path) -> None:
    a = evaluate(_config(tmp_path), loaded=tiny_loaded).to_dict()["documents"]
    b = evaluate(_config(tmp_path), loaded=tiny_loaded).to_dict()["documents"]
    assert json.dumps(a) == json.dumps(b)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\tc"), max_size=400), st.integers(5, 50))
def test_long_text_pieces_rejoin(text: str, piece: int) -> None:
    pieces = split_for_tokenizing(text, piece)
    assert "".join(pieces) == text
    assert len(pieces[-1]) <= piece and all(1 <= len(p) <= piece for p in pieces[:-1])
    for cut, nxt in zip(pieces, pieces[1:]):
        if nxt[0].isspace():
            # cut just before a whitespace character, as late as the piece size allows:
            # none of the characters after it, up to the size limit, is whitespace
            assert not any(c.isspace() for c in nxt[1 : piece - len(cut) + 1]), (cut, nxt)
        else:
            # no whitespace to cut before: a full-size piece cut where it is
            assert len(cut) == piece and not any(c.isspace() for c in cut[1:] + nxt[:1]), (cut, nxt)


def test_long_document_tokenized_in_pieces(tiny_loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import lleval.plan.tokenization as tokenization

    text = " ".join(TEXTS) * 3
    whole = tiny_loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(tokenization, "PIECE_CHARS", 500)
    assert encode(tiny_loaded.tokenizer, [text]) == [whole]


@settings(max_examples=150, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
))
def test_report_loader_fails_cleanly_on_random_json(tmp_path_factory: pytest.TempPathFactory, value: Any) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "r.json"
    path.write_text(json.dumps(value))
    with pytest.raises(ReportError):
        load_report(str(path))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_report_loader_survives_mutations(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """A complete report with a few characters replaced: either a typed one-line error, or a
    report that reads back whole (a change inside a name or a time stamp)."""
    report = score_report_json([{"index": 0, "log_likelihood": -3.0, "tokens": 2, "bytes": 8, "words": 2},
                                {"index": 1, "log_likelihood": -5.5, "tokens": 3, "bytes": 11, "words": 2}])
    text = json.dumps(report)
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.text(alphabet='{}[]",:0123456789abcdefnulltrue -.', max_size=3))
    mutated = text[:position] + replacement + text[position + data.draw(st.integers(0, 3)):]
    path = tmp_path_factory.mktemp("mut") / "r.json"
    path.write_text(mutated)
    try:
        loaded = load_report(str(path))
    except LlevalError as exc:  # the other acceptable outcome: a typed error with a one-line message
        assert str(exc) and "\n" not in str(exc)
    else:
        assert len(loaded.documents) == 2 and all(d.tokens >= 0 and d.bytes >= 0 for d in loaded.documents)
        assert loaded.totals.tokens >= 0


# A process that sends itself SIGTERM while its Nth batch is scored (the handler runs then, in
# the main thread), then runs the CLI: where the signal lands is fixed by N, not by timing.
_SIGTERM_AT_BATCH = """
import os, signal, sys
import lleval.engine.scoring as scoring
real, calls = scoring._run_batch, [0]
def counted(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
scoring._run_batch = counted
from lleval.cli import main
main(sys.argv[2:], prog_name="lleval")
"""


@pytest.mark.subprocess
def test_sigterm_writes_incomplete_report_and_exits_143(tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM during the 120th batch (of one window each; the probe of the checkpoint's
    fingerprint is a call of the scorer, not a batch): the run stops after that batch, writes
    its report with the documents finished and ``complete`` false, saves its checkpoint and
    exits 143."""
    out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
    many = [t * 3 for t in TEXTS] * 20
    args = ["score", "-q", "-m", str(tiny_model_dir), "-d", _data(tmp_path, many), "-L", "32", "-S", "4", "-b", "1",
            "--block-tokens", "200", "--checkpoint", str(ckpt), "--checkpoint-every", "0", "-o", str(out),
            "--bootstrap", "0"]
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_AT_BATCH, "120", *args], capture_output=True, text=True,
                          timeout=300, env=os.environ)
    assert proc.returncode == 143, proc.stderr
    data = json.loads(out.read_text())
    assert data["complete"] is False and 0 < len(data["documents"]) < len(many)
    assert data["timing"]["batches"] == 120  # the batch the signal came in finished; none after it
    assert "stopped by signal 15" in proc.stderr
    saved = json.loads(ckpt.read_text())
    assert saved["rows"] == len(data["documents"]) and saved["complete"] is False


# Issue 17: "a resumed run gives exactly the numbers of an uninterrupted run on the data it was given
# now, or it is refused naming what differs" -- real runs of the CLI on the tiny model.
OTHER = ["A different text altogether, about bread.", "And one more about the tides of the bay."]


def _cli(model: Path, data: str, ckpt: Path, out: Path, *extra: str) -> Any:
    from click.testing import CliRunner

    from lleval.cli import main

    args = ["score", "-q", "-m", str(model), "-d", data, "--checkpoint", str(ckpt), "-o", str(out),
            "--bootstrap", "0", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_checkpoint_of_more_documents_than_the_data_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    first = _cli(tiny_model_dir, _data(tmp_path, TEXTS[:3]), ckpt, tmp_path / "a.json")
    assert first.exit_code == 0, first.output
    other = tmp_path / "other"
    other.mkdir()
    second = _cli(tiny_model_dir, _data(other, OTHER), ckpt, tmp_path / "b.json")
    assert second.exit_code == 2
    assert "holds 3 scored documents" in second.output and "only 2" in second.output
    assert not (tmp_path / "b.json").exists()


def test_limit_below_a_checkpoint_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt, data = tmp_path / "c.ckpt", _data(tmp_path, TEXTS[:3])
    assert _cli(tiny_model_dir, data, ckpt, tmp_path / "a.json").exit_code == 0
    limited = _cli(tiny_model_dir, data, ckpt, tmp_path / "b.json", "--limit", "2")
    assert limited.exit_code == 2 and "--limit" in limited.output
    assert not (tmp_path / "b.json").exists()


def test_a_finished_checkpoint_rebuilds_the_same_report_and_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt, data = tmp_path / "c.ckpt", _data(tmp_path, TEXTS[:3])
    assert _cli(tiny_model_dir, data, ckpt, tmp_path / "a.json").exit_code == 0
    assert json.loads(ckpt.read_text())["complete"] is True
    assert _cli(tiny_model_dir, data, ckpt, tmp_path / "b.json").exit_code == 0
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert b["documents"] == a["documents"] and b["totals"] == a["totals"]
    assert any("finished run" in note for note in b["notes"])
    # more data after a finished run: its last block may have been cut short by the end of
    # the data, so scoring on would batch differently from an uninterrupted run
    more = tmp_path / "more"
    more.mkdir()
    grown = _cli(tiny_model_dir, _data(more, TEXTS[:3] + OTHER), ckpt, tmp_path / "c.json")
    assert grown.exit_code == 2 and "finished run on 3 documents" in grown.output


def test_an_interrupted_checkpoint_with_fewer_documents_now_is_refused(tiny_loaded: Any, tmp_path: Path) -> None:
    ckpt = str(tmp_path / "run.ckpt")
    partial = evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded,
                       should_stop=_stop_after(12))
    done = len(partial.documents)
    assert json.loads(Path(ckpt).read_text())["complete"] is False
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    with pytest.raises(ConfigError, match=f"holds {done} scored documents"):
        evaluate(_config(tmp_path, checkpoint=ckpt, dataset=_data(fewer, TEXTS[: done - 1])), loaded=tiny_loaded)
    # the same data, longer: resumes, and equals the uninterrupted run
    resumed = evaluate(_config(tmp_path, checkpoint=ckpt), loaded=tiny_loaded)
    full = evaluate(_config(tmp_path), loaded=tiny_loaded)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in full.documents]


def test_a_finished_checkpoint_with_tokens_says_there_is_nothing_to_write(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt, data = tmp_path / "c.ckpt", _data(tmp_path, TEXTS[:3])
    assert _cli(tiny_model_dir, data, ckpt, tmp_path / "a.json", "--tokens", str(tmp_path / "t.jsonl")).exit_code == 0
    again = _cli(tiny_model_dir, data, ckpt, tmp_path / "b.json", "--tokens", str(tmp_path / "t2.jsonl"))
    assert again.exit_code == 2 and "finished run" in again.output and "Drop --tokens" in again.output
    assert not (tmp_path / "t2.jsonl").exists()


def test_resuming_with_token_stats_added_is_refused_and_keeps_the_parts(tiny_loaded: Any, tmp_path: Path) -> None:
    """The token file's parts of an interrupted run have no rank and entropy columns: resuming
    with --token-stats is refused before anything is written, and the original command then
    resumes as before."""
    tokens, ckpt = str(tmp_path / "t.parquet"), str(tmp_path / "run.ckpt")
    base = _config(tmp_path, checkpoint=ckpt, checkpoint_every=0, tokens=tokens)
    evaluate(base, loaded=tiny_loaded, should_stop=_stop_after(12))
    parts = sorted(p.name for p in tmp_path.iterdir() if ".parts" in p.name)
    assert len(parts) == 1
    with pytest.raises(ConfigError, match=r"made with --no-token-stats \(this run: --token-stats\)"):
        evaluate(dataclasses.replace(base, token_stats=True), loaded=tiny_loaded)
    assert sorted(p.name for p in tmp_path.iterdir() if ".parts" in p.name) == parts
    resumed = evaluate(base, loaded=tiny_loaded)
    assert resumed.complete and not resumed.failed_outputs
    full = evaluate(_config(tmp_path), loaded=tiny_loaded)
    assert [d.to_dict() for d in resumed.documents] == [d.to_dict() for d in full.documents]


def test_resuming_with_an_output_added_names_its_flag(tiny_loaded: Any, tmp_path: Path) -> None:
    ckpt = str(tmp_path / "run.ckpt")
    evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded, should_stop=_stop_after(12))
    with pytest.raises(ConfigError, match="was made without --html: drop --html to resume it"):
        evaluate(_config(tmp_path, checkpoint=ckpt, html=str(tmp_path / "r.html")), loaded=tiny_loaded)


# Issue 28: a resumed run adds its numbers to the checkpoint's, so everything that decides a
# number must be what it was: the model by what it does (a probe text's log-probs), every
# setting that changes a number, named as the user gave it; and a checkpoint is saved
# between batches, not only at the ends of blocks of a million tokens.

def _other_weights(folder: Path, seed: int = 1, scale: float = 0.5) -> None:
    """Save over ``folder``'s weights a model of the same architecture with other weights (the
    files keep their sizes, as a copy of another training step's would)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(folder)


def _documents(report: Any) -> list[dict[str, Any]]:
    return [d.to_dict() for d in report.documents]


def test_resume_onto_other_weights_in_the_same_folder_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    config = _config(tmp_path, model=str(folder), checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0)
    assert not evaluate(config, should_stop=_stop_after(12)).complete
    _other_weights(folder)
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == sizes  # nothing a size check would see
    with pytest.raises(ConfigError, match="answered otherwise") as info:
        evaluate(config)
    assert "model.safetensors changed" in str(info.value) and "\n" not in str(info.value)


def test_resume_onto_the_same_weights_rewritten_is_accepted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The weight files copied again (a new modification time, the same bytes): the probe comes
    out exactly as before, so the run resumes, to the uninterrupted run's numbers."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    config = _config(tmp_path, model=str(folder), checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0)
    partial = evaluate(config, should_stop=_stop_after(12))
    assert not partial.complete
    time.sleep(0.01)
    (folder / "model.safetensors").unlink()
    shutil.copy(tiny_model_dir / "model.safetensors", folder / "model.safetensors")
    saved = json.loads((tmp_path / "run.ckpt").read_text())["fingerprint"]["files"]["model.safetensors"]
    assert saved[1] != (folder / "model.safetensors").stat().st_mtime_ns
    resumed = evaluate(config)
    assert resumed.complete and _documents(resumed) == _documents(evaluate(_config(tmp_path, model=str(folder))))


def _shifted(inner: Any, by: float) -> Any:
    """A scorer whose every log-prob is ``by`` nats lower than ``inner``'s."""
    def scorer(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        return inner(input_ids, attention_mask, labels, score_mask) - by

    return scorer


@pytest.mark.parametrize("by,accepted", [(0.0, True), (2e-4, True), (5e-3, False), (0.3, False)])
def test_the_probe_tolerance_of_a_float32_model(tiny_loaded: Any, tmp_path: Path, by: float, accepted: bool) -> None:
    """The same model description and files, answering the probe ``by`` nats otherwise: within
    1e-3 on average (a float32 model) it resumes; beyond, it is refused."""
    config = _config(tmp_path, checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0)
    evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(12))
    other = dataclasses.replace(tiny_loaded, scorer=_shifted(tiny_loaded.scorer, by))
    if accepted:
        assert evaluate(config, loaded=other).complete
    else:
        with pytest.raises(ConfigError, match=f"differ from the checkpoint's by {by:.3g} nats on average"):
            evaluate(config, loaded=other)


@pytest.mark.parametrize("by,accepted", [(5e-3, True), (0.05, False)])
def test_the_probe_tolerance_of_a_half_precision_model(tiny_loaded: Any, tmp_path: Path, by: float,
                                                       accepted: bool) -> None:
    """A model run in bfloat16 (or a server, which batches the probe with other requests) is
    allowed 1e-2 nats on average: rounding noise, not other weights."""
    half = dataclasses.replace(tiny_loaded, info=dataclasses.replace(tiny_loaded.info, dtype="bfloat16"))
    config = _config(tmp_path, checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0)
    evaluate(config, loaded=half, should_stop=_stop_after(12))
    other = dataclasses.replace(half, scorer=_shifted(half.scorer, by))
    if accepted:
        assert evaluate(config, loaded=other).complete
    else:
        with pytest.raises(ConfigError, match="the same model stays within 0.01"):
            evaluate(config, loaded=other)


def test_resume_onto_a_server_restarted_with_other_weights_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from test_served import FakeServer

    server = FakeServer(tiny_model_dir)
    try:
        common = dict(model=server.url, max_length=32, stride=16, batch_size=2, block_tokens=64, bootstrap=0)
        config = EvalConfig(dataset=_data(tmp_path, TEXTS[:8]), checkpoint=str(tmp_path / "c.json"),
                            checkpoint_every=0, **common)
        assert not evaluate(config, should_stop=_stop_after(4)).complete
        weights = server.model
        other = tmp_path / "other"
        shutil.copytree(tiny_model_dir, other)
        _other_weights(other)
        server.model = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32).eval()
        with pytest.raises(ConfigError, match="answered otherwise"):
            evaluate(config)
        server.model = weights  # the server back on the weights the checkpoint was made with
        resumed = evaluate(config)
        whole = evaluate(EvalConfig(dataset=config.dataset, **common))
        assert _documents(resumed) == _documents(whole)
    finally:
        server.http.shutdown()


# (setting, value when checkpointed, value on resume, further settings of both runs)
CHANGED = [
    ("min_k", 0.2, 0.5, {"membership": True}),
    ("membership", False, True, {}),
    ("calibration", False, True, {}),
    ("allow_nonfinite", False, True, {}),
    ("batch_size", 3, 4, {}),
    ("block_tokens", 300, 400, {}),
    ("prefix_token", "auto", "none", {}),
    ("max_length", 32, 24, {}),
    ("concat", None, "\n\n", {}),
    ("dtype", "auto", "float32", {}),
    ("html_docs", 20, 5, {"html": "r.html"}),
    ("reference_top_k", 32, 8, {"save_reference": "ref.parquet"}),
]


@pytest.mark.parametrize("name,before,after,both", CHANGED, ids=[c[0] for c in CHANGED])
def test_a_setting_that_changes_numbers_cannot_change_on_resume(tiny_loaded: Any, tmp_path: Path, name: str,
                                                               before: Any, after: Any, both: dict[str, Any]) -> None:
    """Checkpointed with one value, resumed with another: refused before anything is scored or
    written, naming the setting with both values (--min-k 0.2 then 0.5 gave a report labelled
    0.5 holding k = 0.2 values; --membership added named --token-stats)."""
    files = {k: str(tmp_path / v) for k, v in both.items() if isinstance(v, str)}
    ckpt, out = str(tmp_path / "run.ckpt"), tmp_path / "out"
    first = _config(tmp_path, checkpoint=ckpt, checkpoint_every=0, **{**both, **files, name: before})
    evaluate(first, loaded=tiny_loaded, should_stop=_stop_after(12))
    saved = Path(ckpt).read_text()
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        evaluate(dataclasses.replace(first, output=str(out), **{name: after}), loaded=tiny_loaded)
    message = str(info.value)
    assert f"made with " in message and f"(this run: {flag}" in message and "--token-stats" not in message, message
    assert "\n" not in message
    assert Path(ckpt).read_text() == saved and not out.exists()


def test_a_setting_from_a_config_file_is_named_as_its_key(tiny_loaded: Any, tmp_path: Path) -> None:
    ckpt = str(tmp_path / "run.ckpt")
    evaluate(_config(tmp_path, checkpoint=ckpt, membership=True), loaded=tiny_loaded, should_stop=_stop_after(12))
    again = _config(tmp_path, checkpoint=ckpt, membership=True, min_k=0.5, origins={"min_k": "config file c.yaml"})
    with pytest.raises(ConfigError, match=r"made with --min-k 0.2 \(this run: min_k: 0.5 \(from config file c.yaml\)\)"):
        evaluate(again, loaded=tiny_loaded)


def test_the_min_k_refusal_from_the_command_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt, data = tmp_path / "c.ckpt", _data(tmp_path, TEXTS[:3])
    assert _cli(tiny_model_dir, data, ckpt, tmp_path / "a.json", "--membership", "--min-k", "0.2").exit_code == 0
    again = _cli(tiny_model_dir, data, ckpt, tmp_path / "b.json", "--membership", "--min-k", "0.5")
    assert again.exit_code == 2 and "--min-k 0.2 (this run: --min-k 0.5)" in again.output
    assert not (tmp_path / "b.json").exists()


def test_every_setting_says_how_a_resume_treats_it() -> None:
    """Every `Setting` is classified (a new flag cannot be forgotten by the checkpoint), and the
    fingerprint holds exactly those that change a number: each of them changed is refused by
    name, and no other changes the fingerprint."""
    from lleval.config import RESUME_SAME, RESUMES, settings
    from lleval.runner.fingerprint import check, settings_values

    assert [f.name for f, how in settings() if how.resume not in RESUMES] == []
    base = EvalConfig()
    saved = {"settings": settings_values(base), "model": {}, "tokenizer": "", "protocol": {}, "columns": []}
    same = {f.name for f, how in settings() if how.resume == RESUME_SAME}
    assert set(saved["settings"]) == same
    for f, how in settings():
        changed = dataclasses.replace(base, **{f.name: "changed"})
        now = {**saved, "settings": settings_values(changed)}
        if f.name not in same:
            assert now["settings"] == saved["settings"], f.name
            continue
        with pytest.raises(ConfigError, match=f"this run: --{f.name.replace('_', '-')} changed"):
            check(saved, now, changed, "c.ckpt")


def test_settings_that_change_no_stored_number_may_change_on_resume(tiny_loaded: Any, tmp_path: Path) -> None:
    """Bootstrap and its seed (derived at the end from the documents), where the report goes,
    how often to save, and the data file's path (its texts are checked by content)."""
    ckpt = str(tmp_path / "run.ckpt")
    evaluate(_config(tmp_path, checkpoint=ckpt, checkpoint_every=0), loaded=tiny_loaded, should_stop=_stop_after(12))
    moved = tmp_path / "moved"
    moved.mkdir()
    again = _config(tmp_path, checkpoint=ckpt, checkpoint_every=5, bootstrap=100, seed=3, format="json", quiet=True,
                    output=str(tmp_path / "r.json"), dataset=_data(moved))
    resumed = evaluate(again, loaded=tiny_loaded)
    assert resumed.complete and _documents(resumed) == _documents(evaluate(_config(tmp_path), loaded=tiny_loaded))
    assert resumed.bootstrap["resamples"] == 100 and resumed.bootstrap["seed"] == 3


def test_an_older_checkpoint_is_refused_with_what_to_do(tiny_loaded: Any, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    evaluate(_config(tmp_path, checkpoint=str(ckpt), checkpoint_every=0), loaded=tiny_loaded, should_stop=_stop_after(12))
    old = json.loads(ckpt.read_text())
    old["lleval_checkpoint"] = 2
    del old["fingerprint"]["settings"], old["fingerprint"]["probe"]
    ckpt.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"older lleval \(checkpoint version 2\).*delete it"):
        evaluate(_config(tmp_path, checkpoint=str(ckpt)), loaded=tiny_loaded)


def test_a_resume_batches_as_the_checkpoint_did(tiny_loaded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--batch-size auto sizes batches by the memory free, which changes between runs (a GPU):
    a resumed run forms the batches the checkpoint's run formed, else its numbers would not
    be an uninterrupted run's."""
    import lleval.runner.prepare as prepare
    from lleval.plan.batching import Batching

    budgets = iter([200, 200, 90])
    monkeypatch.setattr(prepare, "auto_batching", lambda *a, **k: Batching(256, next(budgets), auto=True,
                                                                           overhead_tokens=32))
    config = _config(tmp_path, batch_size="auto", checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0)
    full = evaluate(_config(tmp_path, batch_size="auto"), loaded=tiny_loaded)
    evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(12))
    resumed = evaluate(config, loaded=tiny_loaded)  # auto would give 90 tokens a batch now
    assert resumed.timing["batching"]["max_batch_tokens"] == 200
    assert _documents(resumed) == _documents(full)


class _Clock:
    """A clock that the engine's batches move on: each is ``step`` seconds of work."""

    def __init__(self, step: float, monkeypatch: pytest.MonkeyPatch) -> None:
        import lleval.engine.scoring as scoring

        self.now, self.step, run_batch = 0.0, step, scoring._run_batch

        def timed(*args: Any) -> Any:
            self.now += self.step
            return run_batch(*args)

        monkeypatch.setattr(scoring, "_run_batch", timed)

    def __call__(self) -> float:
        return self.now


def _first_save(ckpt: Path, seen: list[dict[str, Any]]) -> Any:
    """A should_stop that stops as soon as a checkpoint exists, keeping what it held."""
    def should_stop() -> bool:
        if ckpt.exists() and not seen:
            seen.append(json.loads(ckpt.read_text()))
        return bool(seen)

    return should_stop


@pytest.mark.parametrize("suffix,stats", [(".parquet", True), (".jsonl", False)])
def test_a_save_comes_between_batches_and_resumes_to_the_same_numbers(
        tiny_loaded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, stats: bool) -> None:
    """At the default block size every document is in one block, which used to be saved only
    when it ended. With 10 s of work a batch and --checkpoint-every 60, the first save comes
    after the sixth batch, before any document is finished; stopped right after it, the run
    resumes to the uninterrupted run's documents, totals and token file (with --token-stats,
    the scorer's rank and entropy columns are saved with the batches), and scores only the
    batches left."""
    from lleval.runner.checkpoint import Checkpointer

    monkeypatch.setattr(Checkpointer, "clock", _Clock(10.0, monkeypatch))
    ckpt, tokens, whole_tokens = tmp_path / "run.ckpt", tmp_path / f"t{suffix}", tmp_path / f"whole{suffix}"
    full = evaluate(_config(tmp_path, tokens=str(whole_tokens), block_tokens=1 << 20, token_stats=stats),
                    loaded=tiny_loaded)
    config = _config(tmp_path, checkpoint=str(ckpt), tokens=str(tokens), block_tokens=1 << 20, checkpoint_every=60.0,
                     token_stats=stats)
    seen: list[dict[str, Any]] = []
    partial = evaluate(config, loaded=tiny_loaded, should_stop=_first_save(ckpt, seen))
    assert not partial.complete and partial.documents == []
    assert seen[0]["rows"] == 0 and len(seen[0]["partial"]["shapes"]) == 6  # 60 s of work: six batches
    assert all(len(shape) == (2 if stats else 1) for shape in seen[0]["partial"]["shapes"])
    assert partial.timing["batches"] == 6
    resumed = evaluate(config, loaded=tiny_loaded)
    assert resumed.complete and _documents(resumed) == _documents(full)
    assert resumed.totals == full.totals
    assert resumed.timing["batches"] == full.timing["batches"] - 6
    rows = _token_rows(tokens)
    assert rows == _token_rows(whole_tokens) and ("rank" in rows[0]) == stats


def test_a_block_stopped_twice_resumes_to_the_same_numbers(tiny_loaded: Any, tmp_path: Path) -> None:
    """Stopped in the block, resumed and stopped again in it (the batches saved before and
    those scored since are saved together), then resumed to the end."""
    ckpt = tmp_path / "run.ckpt"
    config = _config(tmp_path, block_tokens=1 << 20, checkpoint=str(ckpt), checkpoint_every=0)
    first = evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(4))
    second = evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(5))
    assert (first.timing["batches"], second.timing["batches"]) == (4, 5)  # a stop is asked before each batch
    assert len(json.loads(ckpt.read_text())["partial"]["shapes"]) == 9
    resumed = evaluate(config, loaded=tiny_loaded)
    full = evaluate(_config(tmp_path, block_tokens=1 << 20), loaded=tiny_loaded)
    assert _documents(resumed) == _documents(full) and resumed.timing["batches"] == full.timing["batches"] - 9


def test_the_engine_takes_a_block_part_back_for_the_block_it_belongs_to() -> None:
    """`engine_stream` with ``keep_done``: a tick carries the block's batches done; handed back
    as ``resume``, those batches are not scored again and the block is the same, value for
    value; handed to another block (or a block with other batches), it is ignored."""
    from helpers import units_of
    from lleval.engine.scoring import EngineOptions, engine_stream
    from lleval.plan.batching import Batching
    from lleval.stream import EngineTick, ScoredBlock

    calls = {"n": 0}

    def scorer(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               score_mask: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return -(labels[score_mask].float() % 7 + 0.5) / 3

    units = units_of([list(range(3, 3 + n)) for n in (40, 25, 33, 12, 50)], 16, 8)
    options = EngineOptions(Batching(2), block_tokens=1 << 20, keep_done=True)
    items = list(engine_stream(scorer, units, options))
    ticks = [i for i in items if isinstance(i, EngineTick)]
    whole = [i for i in items if isinstance(i, ScoredBlock)][0]
    part = ticks[3].done
    assert part is not None and part.batches == 3 and ticks[0].done is not None and ticks[0].done.batches == 0
    calls["n"] = 0
    again = [i for i in engine_stream(scorer, units, dataclasses.replace(options, resume=part))
             if isinstance(i, ScoredBlock)][0]
    assert calls["n"] == len(ticks) - 1 - 3  # only the batches not in the part
    assert [(s.row.tolist(), s.logprob.tolist()) for s in again.units] == \
        [(s.row.tolist(), s.logprob.tolist()) for s in whole.units]
    threes = dataclasses.replace(options, batching=Batching(3))
    batches_of_three = sum(1 for i in engine_stream(scorer, units, threes) if isinstance(i, EngineTick)) - 1
    for other, batches in ((dataclasses.replace(threes, resume=part), batches_of_three),
                           (dataclasses.replace(options, resume=dataclasses.replace(part, first_row=1)), len(ticks) - 1),
                           (dataclasses.replace(options, resume=dataclasses.replace(part, key="0" * 64)), len(ticks) - 1)):
        calls["n"] = 0
        list(engine_stream(scorer, units, other))
        assert calls["n"] == batches  # every batch scored: the part is not this block's


def _token_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_a_run_that_fails_mid_block_keeps_its_batches(tiny_loaded: Any, tmp_path: Path) -> None:
    """A server that dies (a `ScoringError` from the scorer) after minutes of work in one block:
    the batches done are in the checkpoint, and the rerun resumes from them."""
    calls = {"n": 0}

    def dying(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 8:  # the probe, then seven batches
            raise ScoringError("served model http://x/v1: the server answered 502: bad gateway.")
        return tiny_loaded.scorer(*args)

    ckpt = tmp_path / "run.ckpt"
    config = _config(tmp_path, block_tokens=1 << 20, checkpoint=str(ckpt), checkpoint_every=3600)
    with pytest.raises(ScoringError):
        evaluate(config, loaded=dataclasses.replace(tiny_loaded, scorer=dying))
    saved = json.loads(ckpt.read_text())
    assert saved["rows"] == 0 and len(saved["partial"]["shapes"]) == 7
    resumed = evaluate(config, loaded=tiny_loaded)
    full = evaluate(_config(tmp_path, block_tokens=1 << 20), loaded=tiny_loaded)
    assert _documents(resumed) == _documents(full) and resumed.timing["batches"] == full.timing["batches"] - 7


def test_a_saved_block_part_is_dropped_when_its_documents_changed(tiny_loaded: Any, tmp_path: Path) -> None:
    """Documents after those finished may change between runs (an interrupted run resumes onto
    the data given now): the saved batches of a block whose texts changed are not used, and
    the numbers are an uninterrupted run's on the new data."""
    ckpt = tmp_path / "run.ckpt"
    config = _config(tmp_path, block_tokens=1 << 20, checkpoint=str(ckpt), checkpoint_every=0)
    evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(5))
    assert json.loads(ckpt.read_text())["partial"] is not None
    changed = TEXTS[:-1] + [TEXTS[-1] + " And a new ending."]
    other = tmp_path / "other"
    other.mkdir()
    resumed = evaluate(dataclasses.replace(config, dataset=_data(other, changed)), loaded=tiny_loaded)
    full = evaluate(_config(tmp_path, block_tokens=1 << 20, dataset=_data(other, changed)), loaded=tiny_loaded)
    assert _documents(resumed) == _documents(full)


def test_a_damaged_block_part_is_refused_in_one_line(tiny_loaded: Any, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    config = _config(tmp_path, block_tokens=1 << 20, checkpoint=str(ckpt), checkpoint_every=0)
    evaluate(config, loaded=tiny_loaded, should_stop=_stop_after(5))
    saved = json.loads(ckpt.read_text())
    saved["partial"]["values"] = saved["partial"]["values"][:-8]
    ckpt.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="cannot be read") as info:
        evaluate(config, loaded=tiny_loaded)
    assert "\n" not in str(info.value)


@pytest.mark.model
def test_the_real_model_resumes_onto_itself(tmp_path: Path) -> None:
    """SmolLM2-135M, loaded afresh for each run (the model cache's hit, then its stored
    conversion): its probe comes out the same, so a stopped run resumes, to the same numbers."""
    texts = [t * 2 for t in TEXTS[:6]]
    common = dict(dataset=_data(tmp_path, texts), max_length=64, stride=32, batch_size=2, block_tokens=256,
                  bootstrap=0)
    config = EvalConfig(**common, checkpoint=str(tmp_path / "c.ckpt"), checkpoint_every=0)
    assert not evaluate(config, should_stop=_stop_after(6)).complete
    resumed = evaluate(config)
    assert resumed.complete and any(n.startswith("resumed from") for n in resumed.notes)
    assert _documents(resumed) == _documents(evaluate(EvalConfig(**common)))
