"""Record the golden reports that `tests/test_golden.py` compares against.

Runs the built-in default (SmolLM2-135M on the sample prose) and a set of
tiny-model runs covering every protocol, window shape and batching choice
through the public API, and writes their ``documents`` and ``totals`` (and,
for ``kld``, its summary numbers) to ``tests/assets/golden/reports.json``,
together with the CPU and torch version they were computed on: float32
results are bit-identical only on the same kind of CPU and torch build.

Run it only when a change is meant to change numbers, and say why in the
commit:

    .venv/bin/python scripts/make_golden.py            # about a minute here
    .venv/bin/python scripts/make_golden.py --only kld # re-record the kld entry alone

An entry re-recorded alone keeps the CPU and torch it was computed on in its own
``environment`` (the other entries keep the file's): each is compared bit for
bit on its own kind of CPU, and to 1e-5 elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "assets" / "golden" / "reports.json"
sys.path.insert(0, str(ROOT / "tests"))

# name -> (model: "builtin" | "gpt2" | "llama", config overrides). Every config names its
# batching explicitly, so that a change of default batching does not change a golden run.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "builtin-default": ("builtin", {"batch_size": 8}),
    "gpt2-rolling": ("gpt2", {"max_length": 32, "batch_size": 3}),
    "gpt2-strided": ("gpt2", {"max_length": 24, "stride": 7, "batch_size": 5}),
    "gpt2-prefix-none": ("gpt2", {"prefix_token": "none", "batch_size": 8}),
    "gpt2-concat": ("gpt2", {"concat": "\n\n", "max_length": 48, "stride": 16, "batch_size": 4}),
    "gpt2-lm-eval": ("gpt2", {"protocol": "lm-eval", "max_length": 24, "batch_size": 3}),
    "gpt2-hf-guide": ("gpt2", {"protocol": "hf-guide", "max_length": 32, "stride": 16, "batch_size": 8}),
    "gpt2-llama-cpp": ("gpt2", {"protocol": "llama-cpp", "max_length": 32, "batch_size": 8}),
    "gpt2-token-cap": ("gpt2", {"max_length": 32, "batch_size": 8, "max_batch_tokens": 70}),
    "llama-strided": ("llama", {"max_length": 40, "stride": 13, "batch_size": 4}),
    "llama-concat": ("llama", {"concat": "\n", "max_length": 64, "stride": 20, "batch_size": 2}),
}
KLD_RUN = {"max_length": 24, "stride": 8, "batch_size": 3}


def environment() -> dict[str, str]:
    """What float32 bit-identity depends on: the CPU's model and vector unit, and torch."""
    import platform

    import torch

    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = f"{info.get('model name', platform.processor())} (family {info.get('cpu family')}, model {info.get('model')})"
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def texts() -> list[str]:
    from lleval.data.spec import builtin_sample_path

    essays = [json.loads(line)["text"] for line in builtin_sample_path().read_text().splitlines()]
    return [essay[: 120 + 35 * i] for i, essay in enumerate(essays[:8])] + ["", "Short.", " lead space\n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(GOLDEN))
    parser.add_argument("--only", choices=("kld",), default=None,
                        help="re-record this entry alone, keeping the others (and their environment) as they are")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from conftest import _save_tiny

    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig
    from lleval.commands.kld import kl_divergence

    work = Path(tempfile.mkdtemp(prefix="lleval-golden-"))
    data = work / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts()))
    models = {"builtin": None}
    for kind in ("gpt2", "llama"):
        folder = work / kind
        folder.mkdir()
        models[kind] = str(_save_tiny(folder, kind))
    out: dict[str, Any] = {"environment": environment(), "texts": texts(), "runs": {}}
    if args.only:
        out = json.loads(Path(args.output).read_text())
    for name, (kind, overrides) in ({} if args.only else RUNS).items():
        dataset = None if kind == "builtin" else str(data)
        config = EvalConfig(model=models[kind], dataset=dataset, bootstrap=0, **overrides)
        report = evaluate(config).to_dict()
        out["runs"][name] = {"model": kind, "config": {**overrides, "builtin_data": dataset is None},
                             "documents": report["documents"], "totals": report["totals"]}
        print(f"{name}: {report['totals']['tokens']} tokens, LL {report['totals']['log_likelihood']!r}")
    kld = kl_divergence(EvalConfig(model=models["llama"], dataset=str(data), bootstrap=0, **KLD_RUN), models["gpt2"])
    kld_dict = kld.to_dict() if hasattr(kld, "to_dict") else kld
    out["kld"] = {"config": KLD_RUN, **{k: kld_dict[k] for k in ("tokens", "kl_divergence", "top_token_agreement",
                                                                   "delta_p", "perplexity")}}
    if args.only == "kld":
        out["kld"]["environment"] = environment()
    print(f"kld: mean {kld_dict['kl_divergence']['mean']!r}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
