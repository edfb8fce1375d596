"""The cache of converted .gguf models: bit-identical results, rebuilt after a crash or
corruption, safe when two runs convert at once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from helpers import write_jsonl
from lleval.config import EvalConfig
from lleval.backends.model_cache import MANIFEST, STALE_SECONDS, file_sha256, source_sha256

TEXTS = ["The keeper wrote in the logbook every evening.", "Bread needs flour, water, salt and yeast.",
         "Blue light scatters more than red light."]


def _score(model: Path | None, data: str, **overrides: Any) -> Any:
    from lleval.commands.score import evaluate

    return evaluate(EvalConfig(model=None if model is None else str(model), dataset=data, bootstrap=0, **overrides))


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "hashes"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LLEVAL_MODEL_CACHE", str(root))
    return root


def test_cached_load_gives_bit_identical_logprobs(tiny_gguf: Path, cache: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    stored = _score(tiny_gguf, data)
    hit = _score(tiny_gguf, data)
    direct = _score(tiny_gguf, data, model_cache=False)
    monkeypatch.setenv("LLEVAL_MODEL_CACHE", "off")
    off = _score(tiny_gguf, data)
    assert [r.model["cache"] for r in (stored, hit, direct, off)] == ["stored", "hit", "off", "off"]
    rows = [[d.to_dict() for d in r.documents] for r in (stored, hit, direct, off)]
    assert rows[0] == rows[1] == rows[2] == rows[3]  # bit for bit
    assert stored.tokenizer["fingerprint"] == hit.tokenizer["fingerprint"] == direct.tokenizer["fingerprint"]
    assert stored.model["sha256"] == hit.model["sha256"] == file_sha256(tiny_gguf)
    (entry,) = _entries(cache)
    assert entry.name == f"{file_sha256(tiny_gguf)}-float32"


def _weights(dtype: str, gguf: Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    from lleval.backends.base import ModelSpec
    from lleval.backends.hf import load

    loaded = load(ModelSpec(name=str(gguf), dtype=dtype, device="cpu"))
    return dict(loaded.model.named_parameters()), dict(loaded.model.named_buffers()), loaded.info.cache


@pytest.mark.parametrize("first", ["float32", "bfloat16"])
def test_one_float32_entry_serves_every_dtype(tiny_gguf: Path, cache: Path, first: str) -> None:
    """Whichever dtype converts the file first, the entry is float32 and a bf16 run loads it
    (no second conversion), with the float32 weights cast to bf16, bit for bit."""
    import torch

    later = "bfloat16" if first == "float32" else "float32"
    runs = {first: _weights(first, tiny_gguf), later: _weights(later, tiny_gguf)}
    assert [runs[first][2], runs[later][2]] == ["stored", "hit"]
    assert [p.name for p in _entries(cache)] == [f"{file_sha256(tiny_gguf)}-float32"]
    assert json.loads((_entries(cache)[0] / MANIFEST).read_text())["dtype"] == "float32"
    full, half = runs["float32"][0], runs["bfloat16"][0]
    assert full.keys() == half.keys() and all(full[k].dtype == torch.float32 for k in full)
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    bf16_again, buffers, status = _weights("bfloat16", tiny_gguf)  # a hit: what every later run loads
    assert status == "hit" and all(torch.equal(bf16_again[k], half[k]) for k in half)
    assert all(torch.equal(buffers[k], runs["bfloat16"][1][k]) for k in buffers) and buffers


def test_a_bf16_run_that_cannot_store_casts_like_a_hit(tiny_gguf: Path, cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An unwritable cache: the float32 conversion is cast in memory, and gives what loading
    the entry in bf16 gives (parameters cast, the float32 rotary buffers kept)."""
    import torch

    from lleval.backends.model_cache import CacheEntry

    with monkeypatch.context() as patched:
        patched.setattr(CacheEntry, "store", lambda self, model, tokenizer: "permission denied")
        cast, cast_buffers, status = _weights("bfloat16", tiny_gguf)
    assert status == "miss" and not _entries(cache)
    _weights("float32", tiny_gguf)  # stores the entry
    hit, hit_buffers, status = _weights("bfloat16", tiny_gguf)
    assert status == "hit" and cast.keys() == hit.keys() and cast_buffers.keys() == hit_buffers.keys()
    assert all(torch.equal(cast[k], hit[k]) and cast[k].dtype == torch.bfloat16 for k in hit)
    assert all(torch.equal(cast_buffers[k], hit_buffers[k]) and cast_buffers[k].dtype == hit_buffers[k].dtype
               for k in hit_buffers)


@pytest.mark.model
def test_the_real_model_is_bit_identical_from_the_cache(tmp_path: Path) -> None:
    """SmolLM2's quantized Q4_1 GGUF: direct conversion against the session's cache entry."""
    data = write_jsonl(tmp_path / "d.jsonl", [TEXTS[0] * 3])
    cached = _score(None, data, max_length=64)
    direct = _score(None, data, max_length=64, model_cache=False)
    assert cached.model["cache"] in ("hit", "stored") and direct.model["cache"] == "off"
    assert [d.to_dict() for d in cached.documents] == [d.to_dict() for d in direct.documents]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no manifest", "other transformers"])
def test_a_damaged_entry_is_rebuilt(tiny_gguf: Path, cache: Path, tmp_path: Path, damage: str) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    first = _score(tiny_gguf, data)
    (entry,) = _entries(cache)
    weights = entry / "model.safetensors"
    if damage == "truncate":  # a write cut short
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":  # same size, other bytes
        raw = bytearray(weights.read_bytes())
        raw[-5] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "no manifest":
        (entry / MANIFEST).unlink()
    else:
        manifest = json.loads((entry / MANIFEST).read_text())
        (entry / MANIFEST).write_text(json.dumps({**manifest, "transformers": "0.0.1"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _score(tiny_gguf, data)
    assert again.model["cache"] == "stored"  # found wanting, moved aside, converted again
    (warning,) = [w for w in caught if entry.name in str(w.message)]  # said once, not rebuilt silently
    assert [n for n in again.notes if entry.name in n] == [str(warning.message)]
    assert not [n for n in first.notes if entry.name in n]
    assert [d.to_dict() for d in again.documents] == [d.to_dict() for d in first.documents]
    assert _score(tiny_gguf, data).model["cache"] == "hit"
    assert len(_entries(cache)) == 1 and not list(cache.glob(".stale-*"))


SLOW_WRITER = r"""
import os, sys, time
import lleval.backends.model_cache as cache
save, marker, seconds, other = cache._save_plain, sys.argv[1], float(sys.argv[2]), sys.argv[3]
def slow_save(model, tokenizer, folder):
    save(model, tokenizer, folder)
    open(marker, "a").close()  # the weights are written, the manifest is not
    deadline = time.time() + seconds
    while time.time() < deadline and not (other != "-" and os.path.exists(other)):
        time.sleep(0.02)  # until the other run has written its weights too (if one is named), or the time is up
cache._save_plain = slow_save
from lleval.cli import main
sys.argv = ["lleval", *sys.argv[4:]]
main()
"""


def _slow_run(marker: Path, seconds: float, args: list[str], other: Path | None = None) -> subprocess.Popen[str]:
    """A run whose save sleeps ``seconds`` after the weights are written (``marker`` then exists),
    or less: until ``other`` exists."""
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(marker), str(seconds), str(other or "-"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate()


@pytest.mark.subprocess
def test_a_run_killed_mid_write_leaves_nothing_that_is_read(tiny_gguf: Path, cache: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    args = ["score", "-q", "-m", str(tiny_gguf), "-d", data, "--bootstrap", "0", "--format", "json"]
    marker = tmp_path / "written"
    proc = _slow_run(marker, 60, args)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [p.name.startswith(".tmp-") for p in cache.iterdir() if p.name != "hashes"] == [True]
    assert _entries(cache) == []
    rerun = _score(tiny_gguf, data)
    assert rerun.model["cache"] == "stored"
    assert [d.to_dict() for d in rerun.documents] == [d.to_dict() for d in _score(tiny_gguf, data, model_cache=False).documents]
    assert not list(cache.glob(".tmp-*"))  # its writer is dead: the next run that opens the cache sweeps it


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_every_open_sweeps_what_dead_runs_left(tiny_gguf: Path, cache: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    assert _score(tiny_gguf, data).model["cache"] == "stored"
    old = time.time() - STALE_SECONDS - 60
    fates = {f".tmp-x-float32-{_dead_pid()}-0a1b": "swept", f".tmp-x-float32-{os.getpid()}-2c3d": "kept",
             ".tmp-no-pid-here": "kept", ".tmp-no-pid-old": "swept", ".stale-x-float32-4e5f": "swept"}
    for name in fates:
        (cache / name).mkdir()
        (cache / name / "model.safetensors").write_bytes(b"0" * 100)
    os.utime(cache / ".tmp-no-pid-old", (old, old))
    assert _score(tiny_gguf, data).model["cache"] == "hit"  # nothing stored: the open alone sweeps
    assert {p.name for p in cache.glob(".*")} == {n for n, fate in fates.items() if fate == "kept"}


@pytest.mark.parametrize("how", ["not a folder", "permission denied"])
def test_a_cache_that_cannot_be_written_warns_and_notes_why(tiny_gguf: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import errno

    import lleval.backends.model_cache as model_cache

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "cache" if how == "not a folder" else tmp_path / "cache"
    monkeypatch.setenv("LLEVAL_MODEL_CACHE", str(root))
    if how == "permission denied":  # tests run as root here: chmod would not stop the write
        def denied(*args: Any) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(model_cache, "_save_plain", denied)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _score(tiny_gguf, data)
    (warning,) = [w for w in caught if str(root) in str(w.message)]
    assert "LLEVAL_MODEL_CACHE" in str(warning.message) and "--no-model-cache" in str(warning.message)
    assert report.model["cache"] == "miss"
    assert [n for n in report.notes if str(root) in n] == [str(warning.message)]
    if how == "permission denied":
        assert "permission denied" in str(warning.message)
        assert [p.name for p in root.iterdir()] == ["hashes"]  # the temporary folder went with the failure


@pytest.mark.subprocess
def test_two_runs_converting_at_once(tiny_gguf: Path, cache: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    args = ["score", "-q", "-m", str(tiny_gguf), "-d", data, "--bootstrap", "0", "--format", "json"]
    # each holds its entry unfinished until the other has written its own weights: both converted, however
    # late either process starts on a busy machine (neither can store before both have looked and missed)
    first = _slow_run(tmp_path / "a", 240, args, other=tmp_path / "b")
    second = _slow_run(tmp_path / "b", 240, args, other=tmp_path / "a")
    outputs = [proc.communicate(timeout=300) for proc in (first, second)]
    assert [proc.returncode for proc in (first, second)] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert [r["model"]["cache"] for r in reports] == ["stored", "stored"]  # both converted, at the same time
    assert reports[0]["documents"] == reports[1]["documents"]
    assert len(_entries(cache)) == 1 and not list(cache.glob(".tmp-*"))
    assert _score(tiny_gguf, data).model["cache"] == "hit"


def test_the_source_hash_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + b"a" * 1000)
    root = tmp_path / "cache"
    assert source_sha256(source, root) == file_sha256(source)
    (memo,) = (root / "hashes").iterdir()
    saved = json.loads(memo.read_text())
    memo.write_text(json.dumps({**saved, "sha256": "remembered"}))
    assert source_sha256(source, root) == "remembered"  # same path, size, inode and mtime: not read again
    source.write_bytes(b"GGUF" + b"b" * 1000)  # same size, new content, new mtime
    os.utime(source, ns=(saved["mtime_ns"] + 10**9, saved["mtime_ns"] + 10**9))
    assert source_sha256(source, root) == file_sha256(source)


def _entry_check(tiny_gguf: Path, cache: Path, tmp_path: Path) -> tuple[Any, Path]:
    """A stored entry of the tiny model, and the Verification of it a warm run makes."""
    from lleval.backends.model_cache import CacheEntry

    _score(tiny_gguf, write_jsonl(tmp_path / "d.jsonl", TEXTS))
    (entry,) = _entries(cache)
    return CacheEntry(cache, entry.name.rsplit("-", 1)[0], "float32"), entry


def _hashed(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files of ``folder`` that `file_sha256` reads from now on."""
    import lleval.backends.model_cache as model_cache

    read: list[str] = []
    real = model_cache.file_sha256

    def spy(path: Path) -> str:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(model_cache, "file_sha256", spy)
    return read


def test_a_warm_load_does_not_hash_an_unchanged_entry(tiny_gguf: Path, cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    check, entry = _entry_check(tiny_gguf, cache, tmp_path)
    read = _hashed(entry, monkeypatch)
    verification = check.verify()
    assert verification.passed() and verification.remembered and read == []
    manifest = json.loads((entry / MANIFEST).read_text())
    assert {n: m["sha256"] for n, m in manifest["files"].items()} == {n: file_sha256(entry / n)
                                                                     for n in manifest["files"]}


@pytest.mark.parametrize("change", ["same bytes rewritten", "same size new bytes", "mtime set back",
                                    "replaced", "corrupt note", "note of other hashes"])
def test_a_changed_entry_file_or_note_is_hashed_again(tiny_gguf: Path, cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    from lleval.backends.model_cache import VERIFIED

    check, entry = _entry_check(tiny_gguf, cache, tmp_path)
    weights, note = entry / "model.safetensors", entry / VERIFIED
    raw, stat = weights.read_bytes(), weights.stat()
    time.sleep(0.02)  # past the file system's timestamp tick
    if change == "same bytes rewritten":
        weights.write_bytes(raw)
    elif change in ("same size new bytes", "mtime set back"):
        weights.write_bytes(raw[:-5] + bytes(b ^ 0xFF for b in raw[-5:]))
        if change == "mtime set back":  # as cp -p or touch -d would: only the change time tells
            os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "replaced":  # another file, same bytes, renamed over it
        (entry / "new").write_bytes(raw)
        os.replace(entry / "new", weights)
    elif change == "corrupt note":
        note.write_text(note.read_text()[:-7])
    else:
        saved = json.loads(note.read_text())
        saved["files"]["model.safetensors"]["sha256"] = "0" * 64
        note.write_text(json.dumps(saved))
    read = _hashed(entry, monkeypatch)
    verification = check.verify()
    intact = change not in ("same size new bytes", "mtime set back")
    assert verification.passed() is intact and not verification.remembered
    assert "model.safetensors" in read
    if intact:  # checked again and noted again: the next load trusts it without hashing
        read.clear()
        assert check.verify().remembered and read == []
    else:
        assert not entry.exists()  # moved aside, to be converted again


def test_the_source_hash_is_read_again_when_only_the_mtime_was_restored(tmp_path: Path) -> None:
    source, root = tmp_path / "m.gguf", tmp_path / "cache"
    source.write_bytes(b"GGUF" + b"a" * 1000)
    before = source.stat()
    assert source_sha256(source, root) == hashlib.sha256(source.read_bytes()).hexdigest()
    time.sleep(0.02)
    source.write_bytes(b"GGUF" + b"b" * 1000)  # rewritten in place (same inode and size), as cp -p does
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert source_sha256(source, root) == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_warm_report_names_the_files_sha256(tiny_gguf: Path, cache: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    runs = [_score(tiny_gguf, data) for _ in range(2)]
    assert [r.model["cache"] for r in runs] == ["stored", "hit"]
    assert {r.model["sha256"] for r in runs} == {hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()}


SAMPLES = ["The keeper wrote in the logbook.", "  two  spaces\tand a tab\n", "ünïcödé 日本語 🙂",
           "</s>between</s>", "a</s>b <|im_start|>user\nhi<|im_end|>", ""]


def _tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    """What scoring reads of a tokenizer, as plain data."""
    return {
        "encoded": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in SAMPLES],
        "with_specials": [tokenizer(text)["input_ids"] for text in SAMPLES],
        "decoded": [tokenizer.decode(tokenizer(text)["input_ids"]) for text in SAMPLES],
        "added": {i: (t.content, t.special, t.lstrip, t.rstrip, t.normalized, t.single_word)
                  for i, t in tokenizer.added_tokens_decoder.items()},
        "specials": tokenizer.special_tokens_map, "special_ids": tokenizer.all_special_ids,
        "ids": (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id),
        "vocab": tokenizer.get_vocab(), "length": len(tokenizer),
        "backend": json.loads(tokenizer.backend_tokenizer.to_str()),
    }


def _cached_tokenizer_check(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[str], Path]:
    """The tokenizer converted from ``gguf`` directly, the one a warm load reads from its
    entry, the files transformers' Python opened while loading it, and the entry."""
    import transformers.tokenization_utils_base as base

    from lleval.backends.base import ModelSpec
    from lleval.backends.hf import load, open_model

    direct = load(ModelSpec(name=str(gguf), cache=False)).tokenizer
    assert load(ModelSpec(name=str(gguf))).info.cache == "stored"
    opened: list[str] = []

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(base, "open", spy_open, raising=False)  # the module's own reads of files
    warm = open_model(ModelSpec(name=str(gguf)))
    monkeypatch.undo()
    assert warm.cache_status == "hit" and warm.cache is not None
    return direct, warm.tokenizer, opened, warm.cache.folder


def test_the_cached_tokenizer_equals_the_source_and_is_parsed_once(tiny_gguf: Path, cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache format 2: the entry's tokenizer_config.json lists tokenizer.json's added tokens,
    so a warm load does not read tokenizer.json with Python's json as well (only the
    tokenizers library parses it); the tokenizer it loads is the source's."""
    direct, warm, opened, entry = _cached_tokenizer_check(tiny_gguf, monkeypatch)
    assert _tokenizer_facts(warm) == _tokenizer_facts(direct)
    assert "tokenizer.json" not in opened and "tokenizer_config.json" in opened
    saved = json.loads((entry / "tokenizer.json").read_text())["added_tokens"]
    listed = json.loads((entry / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert listed == {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in saved} and listed
    assert json.loads((entry / MANIFEST).read_text())["format"] == 2


@pytest.mark.model
def test_the_real_models_cached_tokenizer_equals_the_source(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """SmolLM2's 17 added tokens (chat markers, special tokens): the same from the cache."""
    from lleval.backends.hf import default_model_path

    monkeypatch.setenv("LLEVAL_MODEL_CACHE", str(tmp_path / "cache"))
    direct, warm, opened, _entry = _cached_tokenizer_check(default_model_path(), monkeypatch)
    facts = _tokenizer_facts(warm)
    assert facts == _tokenizer_facts(direct) and len(facts["added"]) == 17
    assert "tokenizer.json" not in opened


def test_an_entry_of_the_older_format_is_converted_again(tiny_gguf: Path, cache: Path, tmp_path: Path) -> None:
    """An entry cache format 1 wrote (no added tokens in tokenizer_config.json) is moved aside
    and converted again, once, said so in one warning and the report's notes (as an older
    format, not as damage); the run's numbers are those of the old entry."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    first = _score(tiny_gguf, data)
    (entry,) = _entries(cache)
    config = json.loads((entry / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (entry / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = json.loads((entry / MANIFEST).read_text())
    files = {**manifest["files"], "tokenizer_config.json": {"bytes": (entry / "tokenizer_config.json").stat().st_size,
                                                            "sha256": file_sha256(entry / "tokenizer_config.json")}}
    (entry / MANIFEST).write_text(json.dumps({**manifest, "format": 1, "files": files}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _score(tiny_gguf, data)
    assert again.model["cache"] == "stored"  # moved aside, converted again
    (warning,) = [str(w.message) for w in caught if entry.name in str(w.message)]
    assert "cache format 1" in warning and "damaged" not in warning
    assert [n for n in again.notes if entry.name in n] == [warning]
    assert [d.to_dict() for d in again.documents] == [d.to_dict() for d in first.documents]
    assert "added_tokens_decoder" in json.loads((entry / "tokenizer_config.json").read_text())
    assert json.loads((entry / MANIFEST).read_text())["format"] == 2
    assert _score(tiny_gguf, data).model["cache"] == "hit"  # once
    assert len(_entries(cache)) == 1 and not list(cache.glob(".stale-*"))
