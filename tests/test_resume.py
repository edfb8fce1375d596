"""Checkpoints, interrupts, non-finite log-probs, long documents and determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
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
    with pytest.raises(ConfigError, match="different protocol"):
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


@pytest.mark.subprocess
def test_sigterm_writes_incomplete_report_and_exits_143(tiny_model_dir: Path, tmp_path: Path) -> None:
    out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
    many = [t * 3 for t in TEXTS] * 20
    cmd = [str(Path(sys.executable).parent / "lleval"), "score", "-q", "-m", str(tiny_model_dir),
           "-d", _data(tmp_path, many), "-L", "32", "-S", "4", "-b", "1", "--block-tokens", "200",
           "--checkpoint", str(ckpt), "--checkpoint-every", "0", "-o", str(out), "--bootstrap", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    data = json.loads(out.read_text())
    assert data["complete"] is False and 0 < len(data["documents"]) < len(many)
    assert "stopped by signal" in err


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
    with pytest.raises(ConfigError, match=r"different set of per-token columns \(--token-stats"):
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
