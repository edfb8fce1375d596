"""Test helper: the lleval CLI, except that scoring raises on rank 1 (launched by torchrun)."""

import os

from lleval.engine import scoring
from lleval.cli import main

if os.environ.get("RANK") == "1":

    def _fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure on rank 1")

    scoring._run_batch = _fail  # type: ignore[assignment]

if __name__ == "__main__":
    main()
