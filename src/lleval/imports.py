"""Heavy imports with Python's cyclic garbage collector paused, then frozen.

Importing torch, datasets and transformers (start-up), then transformers'
model code (``modeling_utils``, ``masking_utils``: ``torch.distributed.tensor``,
sympy, ``torch._dynamo``) creates about 700,000 objects the collector tracks
(modules, classes, functions), and it scans them again and again while they
are created: on a Zen 5, 0.3-0.6 of 2.0 CPU seconds at start-up and 0.4 of
1.5 in the model code (measured by ``scripts/bench_load.py``). `import_frozen`
turns the collector off for the imports and then moves what is alive into
its permanent generation (`gc.freeze`): modules live as long as the process,
so no later collection needs to scan them. Merely re-enabling it would not
do: the next collection would scan the 700,000 objects, during scoring.

The freeze takes every object alive at that moment; one a caller holds in a
reference cycle is then freed only by reference counting. lleval imports
before it builds a model, so its models stay collectable (a suite frees each
one with `gc.collect`).
"""

from __future__ import annotations

import gc
import importlib
import sys


def import_frozen(*modules: str) -> list[str]:
    """Import those of ``modules`` not imported yet with the collector paused, then freeze
    what is alive (`gc.freeze`); the collector is on afterwards if it was on before. A
    module that this environment lacks is left out. Returns the modules imported now
    (nothing imported: nothing frozen)."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return []
    enabled = gc.isenabled()
    gc.disable()
    imported = []
    try:
        for name in missing:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                    raise  # the module is there but something it needs is not: a real error
                continue  # an optional module this version of the library does not have
            imported.append(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return imported
