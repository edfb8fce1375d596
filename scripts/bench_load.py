"""Warm model loads of one or two source trees of lleval, by stage, in one run.

Each load is a fresh process (``PYTHONPATH`` set to the tree's ``src``) that
runs ``evaluate`` on the built-in dataset with ``--limit 4`` and prints the
report's ``timing.load_seconds`` and, from timers wrapped around the
backend's steps, where it went:

- ``imports``: torch and transformers' model code (``modeling_llama`` and what
  it pulls in), imported lazily by the load;
- ``cache check``: the sha256 of the .gguf and the check of its cache entry
  (started; ``hash wait``: waiting for the entry's hashes, after the tokenizer);
- ``tokenizer``, ``config``, ``weights`` (``from_pretrained`` of the model).

Models: the built-in SmolLM2 (its converted cache entry, which must be warm:
run ``lleval score --limit 4`` once) and a ``save_pretrained`` folder of it
(written once into a temporary folder). Trees alternate, ``--rounds`` times;
the median and best of each stage are printed with the CPU's name. This
machine is noisy: only figures of one invocation compare.

    .venv/bin/python scripts/bench_load.py /work/main /work/wt-load --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
T = time.perf_counter
spent = {}
def timed(owner, name, stage):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = T()
        try:
            return real(*args, **kwargs)
        finally:
            spent[stage] = spent.get(stage, 0.0) + T() - start
    setattr(owner, name, wrapper)
from lleval.backends import hf
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
def import_models():
    start = T()
    import torch, transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401
    spent["imports"] = T() - start
from lleval.backends import model_cache
timed(hf, "_cached_conversion", "cache check")
timed(model_cache.Verification, "passed", "hash wait")
timed(hf, "_load_tokenizer", "tokenizer+")
timed(hf, "_load_model", "weights+")
real_open = hf.open_model
def open_model(spec):
    import_models()
    return real_open(spec)
hf.open_model = open_model
hf.BACKEND.open = open_model
report = evaluate(EvalConfig(model=sys.argv[1] or None, limit=4, bootstrap=0))
spent["tokenizer"] = spent.pop("tokenizer+")
spent["weights"] = spent.pop("weights+")
print(json.dumps({"load_seconds": report.timing.load_seconds, **spent}))
"""

STAGES = ("load_seconds", "imports", "cache check", "hash wait", "tokenizer", "weights")


def cpu_name() -> str:
    """The CPU's model name and family/model numbers (from /proc/cpuinfo where there is one)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in info.items()}
        return f"{fields.get('model name')} (family {fields.get('cpu family')} model {fields.get('model')})"
    except OSError:
        return platform.processor() or platform.machine()


def save_folder(tree: Path, folder: Path) -> None:
    """The built-in model as a save_pretrained folder of float32 safetensors (538 MB)."""
    code = ("import sys; from lleval.backends.hf import load; from lleval.backends.base import ModelSpec; "
            "m = load(ModelSpec(None)); m.model.save_pretrained(sys.argv[1]); m.tokenizer.save_pretrained(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=_env(tree))


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


def one_load(tree: Path, model: str) -> dict[str, float]:
    """One warm load in a fresh process: its stages, in seconds."""
    out = subprocess.run([sys.executable, "-c", CHILD, model], check=True, env=_env(tree), capture_output=True,
                         text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path, help="one or two lleval checkouts (before, after)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-folder", action="store_true", help="only the built-in model")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"builtin": ""}
        if not args.no_folder:
            save_folder(args.trees[-1], Path(tmp) / "smollm2")
            models["folder"] = str(Path(tmp) / "smollm2")
        runs: dict[tuple[str, Path], list[dict[str, float]]] = {(m, t): [] for m in models for t in args.trees}
        for _ in range(args.rounds):
            for name, model in models.items():
                for tree in args.trees:
                    runs[name, tree].append(one_load(tree, model))
    for (name, tree), loads in runs.items():
        cells = []
        for stage in STAGES:
            values = [load.get(stage, 0.0) for load in loads]
            cells.append(f"{stage} {statistics.median(values):.3f} (best {min(values):.3f})")
        print(f"{name:8s} {str(tree):16s} " + ", ".join(cells))


if __name__ == "__main__":
    main()
