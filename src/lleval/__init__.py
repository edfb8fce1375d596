"""lleval: exact, fast log-likelihood and perplexity of causal LMs on text datasets.

Public API: `evaluate`, `EvalConfig`, `Report`. Heavy modules (torch,
transformers) load only when `evaluate` is first used, so ``import lleval``
and ``lleval --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["evaluate", "EvalConfig", "Report", "LoadedModel", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "LoadedModel"):
        from lleval import api

        return getattr(api, name)
    if name == "EvalConfig":
        from lleval.config import EvalConfig

        return EvalConfig
    if name == "Report":
        from lleval.report import Report

        return Report
    raise AttributeError(f"module 'lleval' has no attribute {name!r}")
