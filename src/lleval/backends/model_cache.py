"""Converted models, kept: a ``.gguf`` file is parsed and dequantized once, not every run.

transformers converts a GGUF file on every load (for SmolLM2-135M: about
12 s for the weights, 3 s for the tokenizer and 3 s for the config, nearly
all in gguf-py's metadata parsing and per-tensor name mapping). lleval saves
the converted model (safetensors) and tokenizer once, in a folder keyed by
the file's sha256 and the dtype, and loads that folder on later runs in a
fraction of a second, with bit-identical weights and the same tokenizer.
`lleval.backends.hf` keeps one float32 entry per file: bf16/fp16 runs load it
in their dtype.

- **Where**: ``$LLEVAL_MODEL_CACHE`` if set (``off`` turns the cache off),
  else ``lleval/converted`` under the Hugging Face cache folder
  (``$HF_HOME``, by default ``~/.cache/huggingface``). ``--no-model-cache``
  bypasses it for one run.
- **Atomic and concurrent**: an entry is written into a temporary folder next
  to it and renamed into place in one step, its manifest written last; two
  runs converting at once each write their own and the first rename wins. A
  run killed mid-write leaves only a temporary folder, which is never read;
  its name carries the writer's pid, and every run that opens the cache
  removes those whose writer is dead (names without a pid: after an hour).
- **Verified on read**: the manifest lists every file's size and sha256, the
  source file's sha256, the dtype and the transformers version; an entry that
  does not match in every point is moved aside and rebuilt, and the caller
  says so (`Verification.damage`; `Verification.outdated` for an entry of an
  older `CACHE_FORMAT`): a rebuild costs a whole conversion.
- **Never fails a run**: a cache that cannot be written is reported by
  `CacheEntry.store` (the caller warns and notes it), and the run goes on.
- **Hashed once, not on every run**: the source file's sha256 is remembered
  next to the entries, and an entry's verified hashes in the entry
  (``VERIFIED``), each keyed by the file's size, device, inode, modification
  and change time (`file_identity`). A warm load of SmolLM2 hashed its 538 MB
  of safetensors every time: 0.35-0.38 s on a Zen 4, more on a Zen 3. Any
  write to a file moves its change time (``ctime``, which no tool can set
  back, unlike the ``mtime`` that ``cp -p`` or ``touch -d`` restore), and a
  file replaced by another has another inode: either way it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lleval.errors import os_cause
from lleval.files import file_mode, pid_alive

CACHE_ENV = "LLEVAL_MODEL_CACHE"
MANIFEST = "lleval-cache.json"
VERIFIED = ".lleval-verified.json"  # the entry's files as they were when their hashes were last checked
# 2: tokenizer_config.json lists the added tokens (``added_tokens_decoder``), so transformers
# need not read them from tokenizer.json with Python's json (a second parse of its 3.5 MB)
CACHE_FORMAT = 2
STALE_SECONDS = 3600  # temporary folders older than this belong to runs that died


def cache_root() -> Path | None:
    """The cache folder, or None when ``$LLEVAL_MODEL_CACHE`` is ``off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "lleval" / "converted"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, int]:
    """What changes when a file's bytes may have: its size, device, inode, and modification
    and change times (the change time moves on every write and cannot be set back)."""
    stat = path.stat()
    return {"size": stat.st_size, "device": stat.st_dev, "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns}


def source_sha256(path: Path, root: Path | None) -> str:
    """sha256 of the source file, remembered under ``root`` by its path and `file_identity`."""
    if root is None:
        return file_sha256(path)
    resolved = str(path.resolve())
    identity: dict[str, Any] = {"path": resolved, **file_identity(path)}
    memo = root / "hashes" / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in identity} == identity and isinstance(saved.get("sha256"), str):
            return str(saved["sha256"])
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(memo, json.dumps({**identity, "sha256": digest}))
    except OSError:
        pass  # a read-only cache still works, it only hashes every time
    return digest


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class CacheEntry:
    """The cache folder for one source file in one dtype."""

    root: Path
    sha256: str  # of the source file
    dtype: str

    @property
    def folder(self) -> Path:
        """Where the converted model and tokenizer live."""
        return self.root / f"{self.sha256}-{self.dtype}"

    def verify(self) -> "Verification":
        """Check the entry: its manifest and file sizes now, its files' sha256 in a background
        thread (hashing releases the GIL, so it overlaps the tokenizer's loading); the caller
        asks `Verification.passed` before it trusts the entry."""
        return Verification(self)

    def _manifest_files(self) -> dict[str, Any] | None:
        """The manifest's files if the manifest matches this entry and every size is right."""
        import transformers

        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
            expected = {"format": CACHE_FORMAT, "source_sha256": self.sha256, "dtype": self.dtype,
                        "transformers": transformers.__version__}
            files: dict[str, Any] = manifest["files"]
            sizes_match = all((self.folder / name).stat().st_size == meta["bytes"] for name, meta in files.items())
            return files if files and sizes_match and {k: manifest.get(k) for k in expected} == expected else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _older_format(self) -> int | None:
        """The cache format of an entry written by an older lleval (an integer below
        `CACHE_FORMAT` in its manifest), else None."""
        try:
            found = json.loads((self.folder / MANIFEST).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            return None
        return found if isinstance(found, int) and not isinstance(found, bool) and found < CACHE_FORMAT else None

    def _discard(self, folder: Path) -> None:
        aside = folder.with_name(f".stale-{folder.name}-{uuid.uuid4().hex}")
        try:
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError:
            pass  # another run got there first

    def store(self, model: Any, tokenizer: Any) -> str | None:
        """Save ``model`` and ``tokenizer`` as this entry. Returns None once stored, else why
        the cache could not be written (the run goes on without it)."""
        import transformers

        tmp: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)  # swept already, when the model was opened
            tmp = self.root / f".tmp-{self.folder.name}-{os.getpid()}-{uuid.uuid4().hex}"
            tmp.mkdir()
            _save_plain(model, tokenizer, tmp)
            share(tmp)  # before the files' identities are noted: a chmod moves their change time
            files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
            manifest = {"format": CACHE_FORMAT, "source_sha256": self.sha256, "dtype": self.dtype,
                        "transformers": transformers.__version__, "files": files}
            with (tmp / MANIFEST).open("w") as out:
                out.write(json.dumps(manifest, indent=1))
                out.flush()
                os.fsync(out.fileno())
            remember_verified(tmp, files)  # just hashed: the first warm load need not hash them again
            try:
                tmp.rename(self.folder)
                tmp = None
            except OSError:  # another run renamed its entry into place first: keep that one
                pass
            return None
        except OSError as exc:
            return os_cause(exc)
        except Exception as exc:  # the cache only saves time: a failure to fill it never fails a run
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def share(folder: Path) -> None:
    """Give every file of a new entry the mode a file the user creates gets (``0o666`` less the
    umask, `lleval.files.file_mode`): safetensors writes ``model.safetensors`` 0600, so a
    cache shared by a team (one ``$LLEVAL_MODEL_CACHE``) was unreadable to the others.
    Called before `remember_verified` notes the files' identities (a chmod moves a file's
    change time, which would make the first warm load hash them again)."""
    mode = file_mode()
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, mode)


def sweep(root: Path) -> None:
    """Remove what dead runs left in the cache: temporary folders whose writer's pid (in
    their name) is not alive, those with no pid in their name after an hour, and entries
    moved aside whose removal was cut short. A SIGKILLed conversion of SmolLM2 leaves
    540 MB; without this it would stay forever."""
    now = time.time()
    for stale in [*root.glob(".tmp-*"), *root.glob(".stale-*")]:
        try:
            pid = stale.name.rsplit("-", 2)[-2] if stale.name.startswith(".tmp-") else ""
            if pid.isdigit():
                dead = not pid_alive(int(pid))
            else:
                dead = stale.name.startswith(".stale-") or now - stale.stat().st_mtime > STALE_SECONDS
            if dead:
                shutil.rmtree(stale, ignore_errors=True)
        except (OSError, IndexError):
            pass


def remember_verified(folder: Path, files: dict[str, Any]) -> None:
    """Note in ``folder`` that its ``files`` (name: manifest line) have the sha256 the manifest
    gives, as they are now (`file_identity`). A cache that cannot be written only hashes
    every time."""
    try:
        lines = {name: {**file_identity(folder / name), "sha256": meta["sha256"]} for name, meta in files.items()}
        _write_atomic(folder / VERIFIED, json.dumps({"format": CACHE_FORMAT, "files": lines}))
    except (OSError, KeyError, TypeError):
        pass


def verified_before(folder: Path, files: dict[str, Any]) -> bool:
    """True when every file of the manifest is as it was when its sha256 was last checked
    (`remember_verified`); a missing, corrupt or outdated note is False (hash them)."""
    try:
        noted = json.loads((folder / VERIFIED).read_text())["files"]
        return all(noted[name] == {**file_identity(folder / name), "sha256": meta["sha256"]}
                   for name, meta in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


class Verification:
    """An entry's check: its files' sha256 against the manifest, unless `verified_before`
    says they are unchanged since the last check; else hashed in a background thread.
    ``damage`` says why an entry that was there is not trusted, ``outdated`` the older cache
    format of one an older lleval wrote (either way it is moved aside, and the run converts
    again)."""

    def __init__(self, entry: CacheEntry) -> None:
        import threading

        self.entry = entry
        self.damage: str | None = None
        self.outdated: int | None = None
        self.files = entry._manifest_files() if entry.folder.is_dir() else None
        if self.files is None and entry.folder.is_dir():
            self.outdated = entry._older_format()
            if self.outdated is None:
                self.damage = "its manifest is missing, or does not match this file, dtype or transformers version"
            entry._discard(entry.folder)  # not ours to trust
        self.remembered = self.files is not None and verified_before(entry.folder, self.files)
        self._ok = self.remembered
        self._thread = threading.Thread(target=self._hash, daemon=True)
        if self.files is not None and not self.remembered:
            self._thread.start()

    @property
    def plausible(self) -> bool:
        """The manifest and the sizes match: worth reading while the hashes are checked."""
        return self.files is not None

    def _hash(self) -> None:
        assert self.files is not None
        folder = self.entry.folder
        try:
            before = {name: file_identity(folder / name) for name in self.files}  # a write while hashing shows
            self._ok = all(file_sha256(folder / name) == meta["sha256"] for name, meta in self.files.items())
            if self._ok and before == {name: file_identity(folder / name) for name in self.files}:
                remember_verified(folder, self.files)
        except OSError:
            self._ok = False

    def passed(self) -> bool:
        """Wait for the hashes; an entry that fails is moved aside (and rebuilt by the run)."""
        if self.files is not None and not self.remembered:
            self._thread.join()
        if not self._ok and self.entry.folder.is_dir():
            self.damage = self.damage or "a file's sha256 differs from its manifest"
            self.entry._discard(self.entry.folder)
        return self._ok


def _save_plain(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a model loaded from GGUF as plain safetensors: its weights are already
    dequantized (float), only the GGUF quantizer marker stops ``save_pretrained``."""
    quantizer = getattr(model, "hf_quantizer", None)
    quantization = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if quantization is not None:
            del model.config.quantization_config
        model.save_pretrained(folder)
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            model.config.quantization_config = quantization
    tokenizer.save_pretrained(folder)
    _note_added_tokens(tokenizer, folder)
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _note_added_tokens(tokenizer: Any, folder: Path) -> None:
    """Write the tokenizer's added tokens into its saved ``tokenizer_config.json``.

    transformers leaves them out for a tokenizer backed by ``tokenizers``, as they are in
    tokenizer.json too; but a config without them makes every load read tokenizer.json
    twice, once more with Python's json for its ``added_tokens`` (SmolLM2: 3.5 MB, 0.03-0.07
    s on a Zen 5). Given in the config, they are taken from there (the same tokens: the
    tests compare the loaded tokenizer with the source's)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return
    config["added_tokens_decoder"] = {str(index): token.__getstate__()
                                      for index, token in sorted(tokenizer.added_tokens_decoder.items())}
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
