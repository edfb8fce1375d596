"""What the top-K truncation of ``--save-reference`` does to KL, and what saving costs.

The base is SmolLM2-135M (the built-in model, float32); the compared model is
a copy with Gaussian noise of ``--noise`` times each weight matrix's standard
deviation (as scripts/kld_perturbed.py), or ``--dtype bfloat16`` of the base.
For each K it saves a reference, runs ``kld --reference`` and compares its
per-token KL (a lower bound) with two-model ``kld``'s exact per-token KL:
mean and 99th percentile of the error (exact - bound >= 0), the relative error
of the mean KL, and the file size per token. Then the tokens/s of a score run
with ``--save-reference`` (the default K) against a plain one, alternated over
``--rounds`` rounds in this process. Prints JSON lines and a markdown table.

    .venv/bin/python scripts/kld_reference_table.py --limit 8 --ks 8 32 128
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from lleval.backends.base import slice_positions
from lleval.backends.hf import make_logits_slices
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate, load
from lleval.config import DEFAULT_REFERENCE_TOP_K, EvalConfig
from lleval.engine.kernels import scorer_from_slices


def perturbed(base: Any, noise: float) -> Any:
    """The base with seeded Gaussian noise on every weight matrix."""
    noisy = copy.deepcopy(base.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in noisy.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * param.std() * noise)
    slices = make_logits_slices(noisy)
    return dataclasses.replace(base, model=noisy, slices=slices,
                               scorer=scorer_from_slices(slices, slice_positions(base.vocab or 1)),
                               info=dataclasses.replace(base.info, name=f"{base.info.name} + {noise:g} noise"))


def per_token_kl(path: Path) -> np.ndarray:
    return pq.read_table(path, columns=["kl"]).column("kl").to_numpy().astype(np.float64)


def reference_bytes(path: Path) -> tuple[int, int]:
    """The file's size, and the compressed bytes of its three reference columns."""
    meta = pq.ParquetFile(path).metadata
    extra = 0
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            if col.path_in_schema.split(".")[0] in ("top_ids", "top_logprobs", "tail_logprob"):
                extra += col.total_compressed_size
    return os.path.getsize(path), extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--other", choices=("noise", "bfloat16"), default="noise")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()
    config = EvalConfig(dataset=args.data, limit=args.limit, max_length=args.max_length, bootstrap=0)
    base = load(config)
    if args.other == "noise":
        other = perturbed(base, args.noise)
    else:
        other = load(dataclasses.replace(config, dtype="bfloat16"))
    folder = Path(tempfile.mkdtemp(prefix="kldref-"))
    exact_file = folder / "exact.parquet"
    kl_divergence(dataclasses.replace(config, tokens=str(exact_file)), None, base=base, model=other)
    exact = per_token_kl(exact_file)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "tokens": len(exact), "other": other.info.name,
                      "exact_mean_kl": float(exact.mean())}))
    rows = []
    for k in sorted(set(args.ks) | {DEFAULT_REFERENCE_TOP_K}):
        ref, tokens = folder / f"ref-{k}.parquet", folder / f"bound-{k}.parquet"
        evaluate(dataclasses.replace(config, save_reference=str(ref), reference_top_k=k), loaded=base)
        kl_divergence(dataclasses.replace(config, reference=str(ref), tokens=str(tokens)), None, model=other)
        bound = per_token_kl(tokens)
        error = exact - bound
        size, extra = reference_bytes(ref)
        row = {"k": k, "mean_error": float(error.mean()), "p99_error": float(np.percentile(error, 99)),
               "max_error": float(error.max()), "min_error": float(error.min()),
               "relative_error_of_mean": float(error.mean() / exact.mean()),
               "bytes_per_token": size / len(exact), "topk_bytes_per_token": extra / len(exact)}
        rows.append(row)
        print(json.dumps(row))
    print(json.dumps(timing(config, base, folder, args.rounds)))
    print("\n| K | mean error (nats) | p99 error | relative error of mean KL | file bytes/token | top-K columns bytes/token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['mean_error']:.2e} | {r['p99_error']:.2e} | {r['relative_error_of_mean']:.2%} | "
              f"{r['bytes_per_token']:.0f} | {r['topk_bytes_per_token']:.0f} |")


def timing(config: EvalConfig, base: Any, folder: Path, rounds: int) -> dict[str, Any]:
    """Scoring tokens/s of plain runs and --save-reference runs (default K), alternated."""
    plain, saving = [], []
    for r in range(rounds):
        for name, bucket in (("plain", plain), ("save", saving)):
            extra = {"save_reference": str(folder / f"t-{r}.parquet")} if name == "save" else {}
            report = evaluate(dataclasses.replace(config, **extra), loaded=base)
            bucket.append(report.timing.tokens_per_second)
    return {"plain_tokens_per_s": plain, "save_reference_tokens_per_s": saving,
            "median_ratio": float(np.median(saving) / np.median(plain))}


if __name__ == "__main__":
    main()
