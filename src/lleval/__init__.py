"""lleval: exact, fast log-likelihood and perplexity of causal LMs on text datasets.

Public API: `evaluate` (a score run, returns a `Report`), `Evaluator` (a model a
training loop holds, scored at each call on data read once), `kl_divergence`
(returns a `KLReport`), `compare_files` (returns a `ComparisonReport`),
`EvalConfig` and `LoadedModel`. Heavy modules (torch, transformers) load
only when first used, so ``import lleval`` and ``lleval --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "evaluate": "lleval.commands.score",
    "Evaluator": "lleval.commands.evaluator",
    "LoadedModel": "lleval.backends.base",
    "EvalConfig": "lleval.config",
    "Report": "lleval.report.score",
    "kl_divergence": "lleval.commands.kld",
    "KLReport": "lleval.report.kld",
    "compare_files": "lleval.commands.compare",
    "ComparisonReport": "lleval.report.compare",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return getattr(module, "compare_report_files" if name == "compare_files" else name)
    raise AttributeError(f"module 'lleval' has no attribute {name!r}")
