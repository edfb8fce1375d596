"""Every example in README.md and docs/ runs, so that none can rot.

Each fenced ``bash`` or ``python`` block of a page is run as a reader would run it: in
page order, in one folder per page (a later block may read what an earlier one wrote),
with ``lleval`` and ``python`` on the PATH running this tree's code. The folder holds what
the examples name: ``my-model`` (and ``old``, ``new``, ``model-fp32``, ``model-int8``,
``run/checkpoint-1000``, ``run/checkpoint-2000``, ``model.gguf``), a tiny random Llama with
the test tokenizer, the repository's ``configs/``, and the text files of `DATA`. Examples without ``-m`` score the
built-in SmolLM2, hence the ``model`` marker.

An HTML comment on the line before a block changes what is done with it:

- ``<!-- example: skip (why) -->``: not run (a hub model, a GPU, a server); the reason is required;
- ``<!-- example: file NAME -->``: the block's text is written to NAME in the page's folder
  (a suite file, a config file), for the blocks after it;
- ``<!-- example: needs PROGRAM -->``: run where PROGRAM is installed (``jq``), skipped elsewhere.

The README's set-up blocks (``<!-- run-command -->``, ``<!-- test-command -->``) install a
fresh machine; ``.ci/run`` runs the test command itself, and they are not run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->$")
SET_UP = ("<!-- run-command -->", "<!-- test-command -->")
RUNNABLE = ("bash", "python")
MODEL_NAMES = ("my-model", "old", "new", "model-fp32", "model-int8", "run/checkpoint-1000", "run/checkpoint-2000")

PROSE = [
    "The keeper of the lighthouse wrote in the logbook every evening, noting the wind and the ships.",
    "Bread needs flour, water, salt and yeast. Knead it for ten minutes, then let it rise until doubled.",
    "Blue light scatters more than red light, which is why the sky looks blue at noon and red at dusk.",
    "The river froze early that year, and the children skated from the mill to the old stone bridge.",
    "A good map shows what the traveller needs and leaves out the rest; every map is a choice.",
    "The orchestra tuned to the oboe's A, a habit older than the instruments most of them played.",
    "Tides follow the moon, but the harbour's shape decides how high the water climbs on the quay.",
    "She planted the beans along the fence, where the afternoon sun lingered longest in summer.",
]
#: the text files the examples name, by file name
DATA = {
    "eval.jsonl": "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(PROSE)),
    "code.jsonl": "".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i + 1}\n"}) + "\n"
                          for i in range(6)),
    "notes.txt": "\n\n".join(PROSE) + "\n",
    "notes.jsonl": "".join(json.dumps({"text": t}) + "\n" for t in PROSE[:4]),
}


@dataclass(frozen=True)
class Example:
    """A fenced block of a page: where it starts, its language, its text and its marker."""

    page: Path
    line: int  # 1-based, the opening fence
    language: str
    text: str
    marker: str | None  # the example: comment before it, "set-up" for the README's set-up blocks

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def skipped(self) -> bool:
        return self.marker is not None and (self.marker == "set-up" or self.marker.startswith("skip"))

    @property
    def file(self) -> str | None:
        """The file the block is written to (``file NAME``), else None."""
        return self.marker[5:].strip() if self.marker is not None and self.marker.startswith("file ") else None

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and not self.skipped and self.file is None


def examples(page: Path) -> list[Example]:
    """Every fenced block of ``page``, with the marker on the line before its fence (blank
    lines between them are allowed)."""
    found: list[Example] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    previous: str | None = None
    k = 0
    while k < len(lines):
        line = lines[k].strip()
        if line.startswith("```"):
            end = next((j for j in range(k + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
            marked = MARKER.match(previous or "")
            marker = "set-up" if previous in SET_UP else (marked.group(1) if marked else None)
            text = textwrap.dedent("\n".join(lines[k + 1:end]) + "\n")  # a block indented in a list item
            found.append(Example(page, k + 1, line[3:].strip(), text, marker))
            k, previous = end + 1, None
            continue
        if line:
            previous = line
        k += 1
    return found


ALL = [e for page in PAGES for e in examples(page)]


def test_the_pages_have_examples_and_every_marker_is_known() -> None:
    """A marker that is misspelt would leave a block run or skipped by accident; a skip must
    say why, and a file must be named."""
    readme = [e for e in ALL if e.page.name == "README.md" and e.runs]
    assert len(readme) >= 5 and sum(e.runs for e in ALL) >= 20, [e.name for e in ALL if e.runs]
    for e in ALL:
        if e.marker in (None, "set-up"):
            continue
        assert re.fullmatch(r"skip \(.+\)|file [\w./-]+|needs [\w.-]+", e.marker), (e.name, e.marker)


def test_markers_say_what_is_done_with_each_block(tmp_path: Path) -> None:
    """The parser on a page written here: set-up blocks, skips, files and needs, blank lines
    between a marker and its block, an indented block in a list, and a block with no marker."""
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "<!-- test-command -->", "```bash", "pip install x", "```", "<!-- /test-command -->",
        "<!-- example: skip (needs a GPU) -->", "", "```bash", "lleval score --device cuda", "```",
        "<!-- example: file s.yaml -->", "```yaml", "models: [m]", "```",
        "- a list item:", "  <!-- example: needs jq -->", "  ```bash", "  lleval score | jq .", "  ```",
        "Some prose.", "```bash", "lleval score", "```", "```python", "print(1)", "```", "```text", "lleval x", "```",
    ]))
    found = examples(page)
    assert [(e.line, e.language, e.marker) for e in found] == [
        (2, "bash", "set-up"), (8, "bash", "skip (needs a GPU)"), (12, "yaml", "file s.yaml"),
        (17, "bash", "needs jq"), (21, "bash", None), (24, "python", None), (27, "text", None)]
    assert [e.runs for e in found] == [False, False, False, True, True, True, False]
    assert found[2].file == "s.yaml" and found[2].text == "models: [m]\n"
    assert found[3].text == "lleval score | jq .\n"


def _make_folder(folder: Path, model: Path, gguf: Path) -> dict[str, str]:
    """A page's work folder: the models and data the examples name, and the environment its
    commands run in (``lleval`` and ``python`` from this tree)."""
    for name in MODEL_NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(model, target_is_directory=True)
    shutil.copy(gguf, folder / "model.gguf")
    (folder / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    for name, text in DATA.items():
        (folder / name).write_text(text, encoding="utf-8")
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    shims = (("lleval", f'exec "{sys.executable}" -m lleval "$@"'), ("python", f'exec "{sys.executable}" "$@"'))
    for name, how in shims:
        (bin_dir / name).write_text(f"#!/bin/sh\n{how}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
               GITHUB_STEP_SUMMARY=str(folder / "step-summary.md"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def _run(example: Example, folder: Path, env: dict[str, str], target: bool) -> None:
    """Write a file block, or run a bash or python block; a failing command fails the test
    with its output. A block that needs a program not installed here skips the test when it is
    the ``target``, and is passed over when it only comes before it."""
    if example.file is not None:
        (folder / example.file).parent.mkdir(parents=True, exist_ok=True)
        (folder / example.file).write_text(example.text, encoding="utf-8")
        return
    if not example.runs:
        return
    if example.marker is not None and example.marker.startswith("needs "):
        program = example.marker[6:].strip()
        if shutil.which(program) is None:
            if target:
                pytest.skip(f"{example.name} needs {program}, which is not installed")
            return
    argv = ["bash", "-e", "-o", "pipefail", "-c", example.text] if example.language == "bash" else \
        [sys.executable, "-c", example.text]
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, \
        f"{example.name} exited {done.returncode}:\n{example.text}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="session")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama with the test tokenizer and 4,096 positions (the examples'
    window lengths fit), saved once."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("example-model")
    tokenizer = AutoTokenizer.from_pretrained(Path(__file__).parent / "assets" / "tiny-tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, hidden_size=16, intermediate_size=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def page_folders(example_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """For each page, its work folder, environment and how many of its blocks have run."""
    from helpers import write_tiny_gguf

    gguf = write_tiny_gguf(example_model, tmp_path_factory.mktemp("example-gguf") / "model.gguf")
    state: dict[Path, list[Any]] = {}

    def folder_of(page: Path) -> list[Any]:
        if page not in state:
            folder = tmp_path_factory.mktemp(re.sub(r"\W+", "-", str(page.relative_to(ROOT))))
            state[page] = [folder, _make_folder(folder, example_model, gguf), 0]
        return state[page]

    return folder_of


@pytest.mark.model
@pytest.mark.subprocess
@pytest.mark.parametrize("example", [e for e in ALL if e.runs or e.file], ids=lambda e: e.name)
def test_the_example_runs(example: Example, page_folders: Any) -> None:
    """The block, after every block before it on its page (run once each, in page order)."""
    entry = page_folders(example.page)
    folder, env, done = entry
    blocks = [e for e in examples(example.page) if e.runs or e.file]
    last = blocks.index(example)
    for k in range(done, last + 1):
        _run(blocks[k], folder, env, target=k == last)
        entry[2] = k + 1
