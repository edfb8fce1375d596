"""KL divergence of SmolLM2-135M against a copy of itself with perturbed weights.

A check that ``lleval kld`` sees a real difference and that it agrees with the
perplexity change: the copy adds Gaussian noise of ``--noise`` times each
weight matrix's standard deviation (seeded). Both models score the same
windows of the built-in sample prose (or ``--data``).

    .venv/bin/python scripts/kld_perturbed.py --noise 0.05 --limit 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import torch

from lleval.commands.score import load
from lleval.config import EvalConfig
from lleval.commands.kld import kl_divergence
from lleval.backends.base import slice_positions
from lleval.backends.hf import make_logits_slices
from lleval.engine.kernels import scorer_from_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does: the library leaves torch's threads alone
    config = EvalConfig(dataset=args.data, limit=args.limit, max_length=args.max_length)
    base = load(config)
    noisy = copy.deepcopy(base.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in noisy.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * param.std() * args.noise)
    slices = make_logits_slices(noisy)
    perturbed = dataclasses.replace(
        base, model=noisy, slices=slices,
        scorer=scorer_from_slices(slices, slice_positions(base.vocab or 1)),
        info=dataclasses.replace(base.info, name=f"{base.info.name} + {args.noise:g} noise"),
    )
    result = kl_divergence(config, None, base=base, model=perturbed).to_dict()
    kl, ppl = result["kl_divergence"], result["perplexity"]
    print(json.dumps({
        "noise": args.noise,
        "tokens": result["tokens"],
        "kl_mean": kl["mean"],
        "kl_stderr": kl["stderr"],
        "kl_median": kl["median"],
        "kl_p99": kl["percentiles"]["p99"],
        "top_token_agreement": result["top_token_agreement"],
        "perplexity_base": ppl["base"],
        "perplexity_model": ppl["model"],
        "ln_ppl_ratio": ppl["ln_ratio"],
        "ln_ppl_ratio_ci": ppl["ln_ratio_ci"],
    }, indent=2))


if __name__ == "__main__":
    main()
