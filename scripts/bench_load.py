"""Warm model loads of one or two source trees of lleval, by stage, in one run.

Each load is a fresh process (``PYTHONPATH`` set to the tree's ``src``) that
runs ``evaluate`` on the built-in dataset with ``--limit 4`` inside the CLI's
command scope (``lleval.cli.scope.command_scope``: it imports torch, datasets and
transformers, as ``lleval score`` does before its load clock starts) and
prints the report's ``timing.load_seconds``, the process's CPU seconds over
the same span (``load_cpu``: steadier than wall time on a shared machine) and,
from timers wrapped around the backend's steps, where it went:

- ``start-up``: the command scope's imports (torch, datasets, transformers),
  outside the load clock, paid by every scoring command;
- ``imports``: transformers' model code (``modeling_auto``, ``modeling_llama``
  and what they pull in: ``torch.distributed.tensor``, sympy, ``torch._dynamo``),
  imported lazily by the load, inside its clock (as the tree's ``open_model``
  imports them: ``hf.MODEL_CODE`` with `lleval.imports.import_frozen` where it
  has one);
- ``cache check``: the sha256 of the .gguf and the check of its cache entry
  (started; ``hash wait``: waiting for the entry's hashes, after the tokenizer);
- ``tokenizer``, ``config``, ``weights`` (``from_pretrained`` of the model).

Models: the built-in SmolLM2 (its converted cache entry, which must be warm:
run ``lleval score --limit 4`` once) and a ``save_pretrained`` folder of it
(written once into a temporary folder). ``--caches`` gives each tree its own
model cache folder (``LLEVAL_MODEL_CACHE``): a tree with another cache format
would otherwise move the other's entry aside on every load (warm them first).
Trees alternate, ``--rounds`` times;
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
from lleval.commands import score
from lleval.config import EvalConfig
def load_and_plan(*args, **kwargs):
    start = time.process_time()
    try:
        return real_load_and_plan(*args, **kwargs)
    finally:
        spent["load_cpu"] = time.process_time() - start
real_load_and_plan = score.load_and_plan
score.load_and_plan = load_and_plan
def import_models():
    start = T()
    if hasattr(hf, "MODEL_CODE"):  # a tree that imports the model code itself, the collector paused
        from lleval.imports import import_frozen
        import_frozen(*hf.MODEL_CODE)
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401
    spent["imports"] = T() - start
from lleval.backends import model_cache
def step(old, module, name):  # a backend step: hf.py's own (an older tree), else the hf/ module that looks it up
    if hasattr(hf, old):
        return hf, old
    import importlib
    return importlib.import_module(f"lleval.backends.hf.{module}"), name
timed(*step("_cached_conversion", "backend", "cached_conversion"), "cache check")
timed(model_cache.Verification, "passed", "hash wait")
timed(*step("_load_tokenizer", "pretrained", "_load_tokenizer"), "tokenizer+")
timed(*step("_load_model", "backend", "_load_model"), "weights+")
real_open = hf.open_model
def open_model(spec):
    import_models()
    return real_open(spec)
hf.open_model = open_model
hf.BACKEND.open = open_model
try:
    from lleval.cli.scope import command_scope
except ImportError:  # a tree from before lleval.cli was a package
    from lleval.cli import _command_scope as command_scope
start = T()
with command_scope(True):
    spent["start-up"] = T() - start
    report = score.evaluate(EvalConfig(model=sys.argv[1] or None, limit=4, bootstrap=0))
spent["tokenizer"] = spent.pop("tokenizer+")
spent["weights"] = spent.pop("weights+")
print(json.dumps({"load_seconds": report.timing.load_seconds, **spent}))
"""

STAGES = ("load_seconds", "load_cpu", "start-up", "imports", "cache check", "hash wait", "tokenizer", "weights")


def cpu_name() -> str:
    """The CPU's model name and family/model numbers (from /proc/cpuinfo where there is one)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in info.items()}
        return f"{fields.get('model name')} (family {fields.get('cpu family')} model {fields.get('model')})"
    except OSError:
        return platform.processor() or platform.machine()


def save_folder(tree: Path, folder: Path, cache: Path | None) -> None:
    """The built-in model as a save_pretrained folder of float32 safetensors (538 MB)."""
    code = ("import sys; from lleval.backends.hf import load; from lleval.backends.base import ModelSpec; "
            "m = load(ModelSpec(None)); m.model.save_pretrained(sys.argv[1]); m.tokenizer.save_pretrained(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=_env(tree, cache))


def _env(tree: Path, cache: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    if cache is not None:
        env["LLEVAL_MODEL_CACHE"] = str(cache)
    return env


def one_load(tree: Path, model: str, cache: Path | None) -> dict[str, float]:
    """One warm load in a fresh process: its stages, in seconds."""
    out = subprocess.run([sys.executable, "-c", CHILD, model], check=True, env=_env(tree, cache),
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path, help="one or two lleval checkouts (before, after)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-folder", action="store_true", help="only the built-in model")
    parser.add_argument("--caches", nargs="+", type=Path, help="a model cache folder per tree, in their order")
    args = parser.parse_args()
    caches: list[Path | None] = list(args.caches or [None] * len(args.trees))
    if len(caches) != len(args.trees):
        parser.error("--caches takes one folder per tree")
    cache_of = dict(zip(args.trees, caches))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"builtin": ""}
        if not args.no_folder:
            save_folder(args.trees[-1], Path(tmp) / "smollm2", caches[-1])
            models["folder"] = str(Path(tmp) / "smollm2")
        runs: dict[tuple[str, Path], list[dict[str, float]]] = {(m, t): [] for m in models for t in args.trees}
        for _ in range(args.rounds):
            for name, model in models.items():
                for tree in args.trees:
                    runs[name, tree].append(one_load(tree, model, cache_of[tree]))
    for (name, tree), loads in runs.items():
        cells = []
        for stage in STAGES:
            values = [load.get(stage, 0.0) for load in loads]
            cells.append(f"{stage} {statistics.median(values):.3f} (best {min(values):.3f})")
        print(f"{name:8s} {str(tree):16s} " + ", ".join(cells))


if __name__ == "__main__":
    main()
