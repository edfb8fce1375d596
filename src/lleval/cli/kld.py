"""``lleval kld``: KL(P_base || P_model) per scored token, against a base model, the same
model in another dtype, or a saved reference (``--reference``).

Its own flags (``--base``, ``--base-dtype``, the DATASET argument) are checked against
each other here; everything else is score's options and checks, then one call to
`lleval.commands.kld.kl_divergence`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from lleval.cli.calls import call
from lleval.cli.checks import check_early
from lleval.cli.deliver import deliver, log_result
from lleval.cli.options import (CONTEXT_SETTINGS, SectionedCommand, SectionOption, config_from_flags, config_options,
                                origin_of)
from lleval.cli.progress import with_progress
from lleval.cli.scope import command_scope
from lleval.config import DTYPES


@click.command(cls=SectionedCommand, context_settings=CONTEXT_SETTINGS)
@click.option("--base", "base_model", default=None, cls=SectionOption, section="base",
              help="Reference model (hub id, folder or .gguf file). Default: the same model as --model.")
@click.option("--base-dtype", type=click.Choice(DTYPES), default=None, cls=SectionOption, section="base",
              help="dtype of the base model. Default: --dtype. With no --base: the same model in two dtypes.")
@click.argument("dataset_argument", metavar="[DATASET]", required=False, default=None)
@config_options("kld")
def kld(base_model: str | None, base_dtype: str | None, dataset_argument: str | None, **flags: Any) -> None:
    """KL divergence KL(P_base || P_model) per scored token, over the full vocabulary.

    --model is the model compared with the base (default: the built-in
    SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32). Both run over the same windows, with every option of
    score. Files written: the report (-o), and when asked the per-token file (--tokens, with each token's KL)
    and the page (--html); nothing else. The data is --dataset (or DATASET, the same). Refuses models whose
    tokenizers differ.

    \b
    Examples:
      lleval kld --base ./model-fp32 --model ./model-int8 -d eval.jsonl -o kld.json
      lleval kld --base-dtype float32 --dtype bfloat16      # what bf16 costs the built-in model
      lleval kld -m ./model-int8 -d eval.jsonl --reference ref.parquet --html kld.html
    """
    if dataset_argument is not None and flags["dataset"] not in (None, dataset_argument):
        raise click.UsageError(f"two datasets given ({dataset_argument} and --dataset {flags['dataset']}): pick one.")
    if flags["reference"] is not None and (base_model is not None or base_dtype is not None):
        raise click.UsageError("--reference is the base: drop --base and --base-dtype.")
    if base_model is None and base_dtype in (None, flags["dtype"]) and flags["reference"] is None:
        raise click.UsageError("give --base (another model), --base-dtype (the same model in another dtype), "
                               "or --reference (a file of lleval score --save-reference).")
    config = config_from_flags({**flags, "dataset": flags["dataset"] or dataset_argument},
                               typed=["dataset"] if dataset_argument is not None else [])
    config = dataclasses.replace(config, origins={**config.origins, **base_origins()})
    from lleval.preflight import check_kld

    call(check_kld, config, base_dtype, base_model)
    check_early(config)
    with command_scope(config.quiet):
        from lleval.commands.kld import kl_divergence

        base = None if config.reference else base_model or config.model  # --reference: the base is the file
        result = with_progress(config, kl_divergence, config, base, base_dtype=base_dtype)
        failed = deliver(result, config.output, config.format, log_result(result, config, "kld"))
    if failed:
        sys.exit(1)


def base_origins() -> dict[str, str]:
    """Where kld's --base and --base-dtype came from (``base``, ``base_dtype``), for the
    report's ``settings``: typed, or from the config file; absent when left unset."""
    ctx = click.get_current_context()
    pairs = (("base_model", "base"), ("base_dtype", "base_dtype"))
    return {name: origin for param, name in pairs if (origin := origin_of(ctx, param)) is not None}
